import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    env = os.environ.get("MAGN_DATA")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The benchmark datasets (../shared/datasets or $MAGN_DATA); skip if absent."""
    root = _data_root()
    if not (root / "Set12").is_dir():
        pytest.skip(f"benchmark datasets not found at {root} (set MAGN_DATA)")
    return root


@pytest.fixture(scope="session")
def peers_root() -> Path:
    """The peers' published checkpoints (../shared/peers or $MAGN_PEERS); skip if absent."""
    root = Path(os.environ.get("MAGN_PEERS") or REPO.parent / "shared" / "peers")
    if not (root / "dncnn_gray_blind.pth").is_file():
        pytest.skip(f"peer checkpoints not found at {root} (set MAGN_PEERS)")
    return root


@pytest.fixture
def shipped_only(monkeypatch, tmp_path):
    """An empty cache and no network: only the files shipped in weights/ can serve."""
    monkeypatch.setenv("MAGN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MAGN_OFFLINE", "1")
    monkeypatch.delenv("MAGN_MANIFEST", raising=False)
    monkeypatch.delenv("MAGN_WEIGHTS_URL", raising=False)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
