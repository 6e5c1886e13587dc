"""The README's main job runs on what the repository ships: no benchmark datasets."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _psnr(table: str, model: str) -> float:
    row = next(line for line in table.splitlines() if line.startswith(f"| {model} |"))
    return float(re.search(r"\| ([0-9.]+) / ", row).group(1))


@pytest.mark.slow
def test_demo_runs_with_no_datasets_and_restores_better_than_its_inputs(tmp_path):
    env = dict(os.environ, MAGN_DATA=str(tmp_path / "no-datasets"), OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    out = tmp_path / "demo"
    result = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), str(out)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in (out / "restored").iterdir()) == [
        "camera_magn.png", "chelsea_magn.png", "rocket_magn.png"]
    denoise, dejpeg = (out / "denoise.md").read_text(), (out / "dejpeg.md").read_text()
    assert _psnr(denoise, "magn-s-local-denoise-gray") > _psnr(denoise, "opencv-nlm") > _psnr(denoise, "input")
    assert _psnr(dejpeg, "magn-s-local-dejpeg-color") > _psnr(dejpeg, "input")
    assert "quality 96 from the JPEG tables" in " ".join(result.stdout.split() + result.stderr.split())
