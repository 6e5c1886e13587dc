"""A run folder, as `magn train` writes it and everything else reads it: the names of its
files, what makes a folder a run (and so safe to write over), its log and its config.
Reading a run needs none of the training machinery (no model, no data scan): publishing,
the curves and the study read runs this way while a run goes on.

    RUN/
      .magn-run                  marks the folder as a run: only a run's files are replaced
                                 (while a process trains it, the folder is claimed as
                                 .NAME.magn-lock beside it)
      config.toml                the settings actually used
      log.jsonl                  one JSON record per log interval, validation and event
      curves.png                 loss and validation PSNR
      state_latest.pt            everything needed to resume (training/loop.py), weights
                                 included: one file is one atomic resume point
      model_latest.safetensors   EMA weights at the last checkpoint, with provenance
      model_best.safetensors     EMA weights at the best validation PSNR, with provenance
      export.safetensors         fp16 EMA weights, with provenance (runs/export.py)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

from magncli.errors import MagnError
from magncli.fileio import write_file_atomic
from magncli.training.config import TrainConfig, config_from_dict, merge, read_recipe
from magncli.version import __version__

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


def load_run_config(run_dir, overrides: Optional[dict] = None) -> TrainConfig:
    """The config a run folder was started with (for --resume), with `overrides` applied."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise MagnError(f"cannot resume: {path} does not exist (is {run_dir} a run folder?)")
    settings = merge(read_recipe(path), {k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(settings)
