"""How a run's weights were made, as every weights file of the run carries it (the keys of
a weights-manifest entry): the data, the steps, the hardware, the CPU-hours, each session
(start, resume, warm start) as the run's log recorded it, the commands and the commits.

The Trainer writes it into model_latest, model_best and the export, so that a warm start
from any of them keeps the CPU-hours and the runs behind it; export.py and the cards read
it back without training anything.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from magncli.fileio import home_as_tilde
from magncli.runs.folder import LOG_FILE, read_log
from magncli.training.config import TrainConfig
from magncli.version import git_commit

# What each session record keeps of the log's start and resume records.
SESSION_KEYS = ("event", "step", "commit", "precision", "threads", "device", "warm_start")


def sessions(run_dir: Path) -> List[dict]:
    """Each start, resume and warm start of the run, as its log recorded them."""
    return [{k: r.get(k) for k in SESSION_KEYS if r.get(k) is not None}
            for r in read_log(Path(run_dir) / LOG_FILE) if r.get("event") in ("start", "resume")]


def trained_commit(session_records: List[dict]) -> Optional[str]:
    """The commit(s) the sessions trained with, as their start records say; a log from
    before they did so gives the checkout's commit at export time instead."""
    if not any(s.get("commit") for s in session_records):
        return git_commit()
    return ", ".join(dict.fromkeys(s.get("commit") or "unrecorded" for s in session_records))


def commands(run_dir: Path, current: Optional[str] = None) -> Optional[str]:
    """The command lines that made the weights: the start, then each resume. `current`, the
    command of the process asking, is added when the log does not have it yet (a run folder
    whose events predate the "command" field)."""
    records = [r for r in read_log(Path(run_dir) / LOG_FILE) if r.get("event") in ("start", "resume")]
    lines = [r.get("command") for r in records]
    if current is not None and (not records or records[-1].get("command") != current):
        lines.append(current)
    # command_line() already reads the home folder as "~"; older logs did not.
    return "; then ".join(home_as_tilde(c) for c in lines if c) or None


def provenance(run_dir: Path, config: TrainConfig, *, step: int, cpu_s: float, elapsed_s: float,
               data: dict, hardware: str, validation: Optional[str], command: Optional[str]) -> dict:
    """How the weights of `step` were made. data: the training data's record
    (training/data.py, ImageList.describe); validation: the held-out set's name."""
    session_records = sessions(run_dir)
    return {"training_data": data,
            "steps": step, "planned_steps": config.steps,
            "batch_size": config.batch, "patch_size": config.patch,
            "hardware": hardware,
            "wall_time": f"{elapsed_s / 3600:.2f} h",
            "cpu_hours": round(cpu_s / 3600, 3),
            "sessions": session_records, "commit": trained_commit(session_records),
            "command": commands(run_dir, command),
            "validation": validation,
            "notes": f"seed {config.seed}, lr {config.lr} {config.schedule}, EMA {config.ema_decay}"}
