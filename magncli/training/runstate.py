"""What a training run keeps beside its model: the files of the run folder (their names,
the log, atomic saves, the config it was started with), the EMA weights, the RNG states
and a description of the hardware, for the Trainer (training/loop.py) to save, log and
restore.
"""
from __future__ import annotations

import copy
import json
import os
import platform
import random
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from magncli.errors import MagnError
from magncli.fileio import atomic_path, write_file_atomic
from magncli.training.config import TrainConfig, config_from_dict, merge, read_recipe
from magncli.version import __version__

# The run folder (see training/loop.py for what each holds).
CONFIG_FILE = "config.toml"
LOG_FILE = "log.jsonl"
CURVES_FILE = "curves.png"
STATE_FILE = "state_latest.pt"
LATEST_FILE = "model_latest.safetensors"
BEST_FILE = "model_best.safetensors"
EXPORT_FILE = "export.safetensors"
# What makes a folder a run folder: written when a run starts. Folders of magn before it
# count by their resume point with its config and log (LEGACY_RUN_FILES).
MARKER_FILE = ".magn-run"
LEGACY_RUN_FILES = (STATE_FILE, CONFIG_FILE, LOG_FILE)
CHECKPOINT_FILES = (STATE_FILE, LATEST_FILE, BEST_FILE, EXPORT_FILE)


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` was made by `magn train` (its marker, or a legacy run's files):
    only then may a run write over its config and log."""
    folder = Path(folder)
    return (folder / MARKER_FILE).is_file() or all((folder / n).is_file() for n in LEGACY_RUN_FILES)


def check_new_run_folder(folder: Path) -> None:
    """MagnError unless a new run may start in `folder`: new, empty, or a run folder that
    died before its first checkpoint. A trained run whose resume point was deleted, and a
    folder of the user's own files, are never written over."""
    folder = Path(folder)
    if (folder / STATE_FILE).exists():
        raise MagnError(f"{folder} already holds a run; pass resume=True to continue it, "
                        "or another run_dir=FOLDER")
    if folder.exists() and not folder.is_dir():
        raise MagnError(f"{folder}: is a file, not a run folder; give another run_dir=FOLDER")
    if not folder.exists() or not any(folder.iterdir()):
        return
    if not is_run_folder(folder):
        raise MagnError(f"{folder} is not empty and not a magn run folder (no {MARKER_FILE}); "
                        "give a new or empty run_dir=FOLDER")
    trained = [n for n in CHECKPOINT_FILES if (folder / n).exists()]
    if trained:
        raise MagnError(f"{folder} holds a trained run ({trained[0]}) with no {STATE_FILE} to resume; "
                        "give another run_dir=FOLDER")


def check_resumable(folder: Path) -> None:
    state = Path(folder) / STATE_FILE
    if not state.is_file():
        raise MagnError(f"cannot resume: {state} does not exist")
    if not is_run_folder(folder):
        raise MagnError(f"cannot resume: {folder} is not a magn run folder (no {MARKER_FILE})")


def write_marker(folder: Path) -> None:
    if not (Path(folder) / MARKER_FILE).is_file():
        write_file_atomic(Path(folder) / MARKER_FILE, json.dumps({"magn": __version__}) + "\n", overwrite=True)


class EMA:
    """Exponential moving average of the weights: the model that is validated and exported.

    ema = d * ema + (1 - d) * weights, with d = min(decay, (1 + n) / (10 + n)) after n
    updates: early on the average follows the weights instead of remembering the random
    initialisation (which would make short runs look untrained). Floating-point buffers
    (BatchNorm running statistics) are averaged alike, as timm's ModelEmaV2 does: copied,
    they were the live weights' statistics of the last few batches, and after a jump of
    the live weights the averaged weights met statistics that were not theirs (held-out
    validation of a JPEG run fell from 32.7 to 27.4 dB for one checkpoint, q90 from 40.2
    to 22.9, and came back at the next). Integer buffers (counters) are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        # One foreach call for all the weights and float buffers (a Python loop of lerps cost
        # 3x as long, and it is serial work beside every step).
        pairs = [(e, w) for e, w in zip([*self.model.parameters(), *self.model.buffers()],
                                        [*model.parameters(), *model.buffers()]) if e.is_floating_point()]
        if pairs:
            torch._foreach_lerp_([e for e, _ in pairs], [w.detach() for _, w in pairs], 1.0 - d)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            if not ema_b.is_floating_point():
                ema_b.copy_(b)
        self.updates += 1


def rng_states() -> dict:
    """torch, CUDA, numpy and Python RNG states as tensors, lists and numbers only, so that
    torch.load(weights_only=True) reads them back (numpy's own state holds an ndarray)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = states["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


def atomic_torch_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_log(path: Path) -> List[dict]:
    """log.jsonl records; a torn last line (the process was killed mid-write) is dropped."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def first_warm_start(provenance: dict) -> Optional[dict]:
    """The record of the warm start a checkpoint's run began from (its provenance's
    sessions), or None for a run from scratch."""
    return next((s["warm_start"] for s in provenance.get("sessions") or [] if s.get("warm_start")), None)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def hardware_string(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{_cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return f"{world}x {name}" if world > 1 else name


def cpu_state(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def load_run_config(run_dir, overrides: Optional[dict] = None) -> TrainConfig:
    """The config a run folder was started with (for --resume), with `overrides` applied."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise MagnError(f"cannot resume: {path} does not exist (is {run_dir} a run folder?)")
    settings = merge(read_recipe(path), {k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(settings)
