"""A published checkpoint's validation curve: held-out PSNR against training CPU-hours for
every run that made its weights, kept beside its card as weights/results/NAME-validation.json
(and .png). A run that continues a published file keeps that file's points up to where it
started, so the curve spans the whole lineage; points after a start were training that did
not make the weights, and are left out.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

from magncli.fileio import write_file_atomic
from magncli.runs.curves import draw_validation_series, write_png
from magncli.runs.folder import LOG_FILE, read_log


def run_points(records: List[dict], run_name: str) -> List[dict]:
    """A run's validation points (its log.jsonl records) as the curve file holds them."""
    return [{"step": r["step"], "cpu_hours": round(r.get("cpu_s", r.get("elapsed_s", 0)) / 3600, 4),
             "val_psnr": r["val_psnr"], "levels": {k: v for k, v in r["val"].items() if k != "mean"},
             "run": run_name}
            for r in records if "val_psnr" in r]


def earlier_points(curve_file: Path, warm: Optional[dict], replaced: set, validation,
                   runs_folder: Path) -> List[dict]:
    """The points of the runs that made the weights this run started from, on the same
    held-out images. warm: the run's warm-start record (runs/folder.py, first_warm_start;
    None for a run from scratch), each nesting the one before ("from"). replaced: the
    sha256 of the checkpoint being replaced and of the weights its own run started from. A
    start from either (a run that continues the published file, or an earlier export of
    this same run being republished) takes the published curve's points up to it; a start
    from another run's own file (RUN/model_latest.safetensors, a run not published) that
    run's points, read from its folder beside this one. The provenance rounds CPU-hours to
    3 decimals, the curve to 4."""
    points: List[dict] = []
    while warm:
        started = warm["cpu_s"] / 3600 + 5e-4
        if warm.get("sha256") in replaced:
            if curve_file.is_file():
                previous = json.loads(curve_file.read_text())
                if previous.get("validation") == validation:
                    points = [p for p in previous["points"] if p["cpu_hours"] <= started] + points
            break
        run_name, _, _ = str(warm.get("weights", "")).rpartition("/")
        records = read_log(runs_folder / run_name / LOG_FILE) if run_name else []
        if not any(r.get("event") == "start" and r.get("val_set") == validation for r in records):
            break
        points = [p for p in run_points(records, run_name) if p["cpu_hours"] <= started] + points
        warm = warm.get("from")
    return points


def write_validation_curve(json_path: Path, png_path: Path, name: str, validation, points: List[dict]) -> None:
    """The curve file and its plot (one series per run)."""
    write_file_atomic(json_path, json.dumps({"validation": validation, "points": points}, indent=1,
                                            ensure_ascii=False) + "\n", overwrite=True)
    by_run: dict = {}
    for point in points:
        by_run.setdefault(point.get("run", "earlier run"), []).append((point["cpu_hours"], point["val_psnr"]))
    write_png(png_path, draw_validation_series(
        list(by_run.items()), f"{name}: validation PSNR (dB, held-out images) against CPU-hours"))
