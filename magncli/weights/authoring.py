"""Authoring the manifest: add a checkpoint file to it, record its benchmark scores.

What `magn weights add` and `magn weights scores` do, for whoever publishes weights; a
user who only restores images never runs this code. Every change is validated as a
whole manifest before any file is written.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import List, Optional, Sequence

from magncli.errors import MagnError
from magncli.fileio import atomic_path
from magncli.weights.cache import file_sha256
from magncli.tasks import TASKS, get_task
from magncli.weights.manifest import (PROVENANCE_KEYS, WeightsEntry, load_manifest,
                                      parse_manifest, save_manifest)


def parse_levels(task: str, text: Optional[str]) -> dict:
    """'25' or '15,25,50' -> {"sigma": [...]}; '0-55' -> {"sigma_range": [0, 55]} (blind)."""
    key = get_task(task).level_key
    if key is None:
        if text:
            raise MagnError(f"{task} has no levels; drop levels={text!r}")
        return {}
    if not text:
        raise MagnError(f"pass levels='25', '15,25,50' or '0-55' (blind) for a {task} model")

    def number(s: str):
        try:
            v = float(s)
        except ValueError:
            raise MagnError(f"levels={text!r}: {s!r} is not a number") from None
        if not math.isfinite(v):        # json.dumps would write NaN: an invalid manifest
            raise MagnError(f"levels={text!r}: {s!r} is not a finite number")
        get_task(task).check_level(v)   # a sigma below 0, a quality of 0: the task's own words
        return int(v) if v.is_integer() else v

    text = text.strip()
    m = re.fullmatch(r"([0-9.]+)\s*-\s*([0-9.]+)", text)
    if m:
        lo, hi = number(m.group(1)), number(m.group(2))
        if lo > hi:
            raise MagnError(f"levels={text!r}: the range is backwards")
        return {f"{key}_range": [lo, hi]}
    return {key: [number(s.strip()) for s in text.split(",") if s.strip()]}


def levels_from_metadata(task: str, meta: dict) -> dict:
    """The manifest's level fields from a checkpoint's metadata as `magn train` writes it
    ({"sigma_range": [0, 55]}, {"qualities": [10, 20]}, ...); {} if it records none."""
    key = get_task(task).level_key
    if key is None:
        return {}
    plural = {"sigma": "sigma", "quality": "qualities"}[key]
    if meta.get(f"{key}_range") is not None:
        lo, hi = meta[f"{key}_range"]
        return {f"{key}_range": [lo, hi]}
    values = meta.get(plural, meta.get(key))
    if values is None:
        return {}
    return {key: list(values) if isinstance(values, (list, tuple)) else [values]}


def add_checkpoint(file, *, name: str, task: Optional[str] = None, channels: Optional[int] = None,
                   levels: Optional[str] = None, urls: Sequence[str] = (), default: bool = False,
                   copy_file: bool = True, manifest_path=None, replaces: Sequence[str] = ()) -> WeightsEntry:
    """Append a checkpoint file to the manifest (arch/config read from its metadata).

    copy_file: copy it next to the manifest (shipped with the repository); otherwise only
    its file name is recorded (host it somewhere and give its urls, or place it in the cache).
    replaces: names of entries this one supersedes (it may be its own name, to publish a
    newer export of a run): they leave the manifest, and their shipped files are deleted
    once no entry uses them. A superseded file's scores do not carry over.
    """
    from magncli.checkpoints import checkpoint_arch, read_checkpoint  # imports torch: only when adding

    file = Path(file).expanduser()
    state, meta = read_checkpoint(file)
    arch, config = checkpoint_arch(file, state, meta)
    if channels is None:
        channels = config.get("in_channels")
        if channels is None:
            raise MagnError(f"{file}: its config does not say the channels; pass channels=1 or 3")
    if task is None:
        task = meta.get("task")
        if task is None:
            raise MagnError(f"{file}: its metadata does not say the task; pass task=NAME "
                            f"({', '.join(TASKS)})")
    if levels or get_task(task).level_key is None:
        serves_levels = parse_levels(task, levels)
    else:  # what `magn train` recorded; parse_levels then asks for levels
        serves_levels = levels_from_metadata(task, meta) or parse_levels(task, levels)

    manifest = load_manifest(manifest_path)
    missing = [r for r in replaces if not manifest.find(r)]
    if missing:
        raise MagnError(f"{manifest.path} lists no checkpoint named {missing[0]!r} to replace")
    replaced = [manifest.get(r) for r in replaces]
    kept = [e for e in manifest.entries if e.name not in replaces]
    if any(e.name == name for e in kept):
        raise MagnError(f"{manifest.path} already lists a checkpoint named {name!r} "
                        "(replaces=[name] publishes a newer file under it)")
    if any(e.file == file.name for e in kept):
        raise MagnError(f"{manifest.path} already lists a checkpoint file named {file.name!r}")

    sha256 = file_sha256(file)
    raw_entry = {
        "name": name,
        "serves": {"task": task, "channels": channels, **serves_levels},
        "arch": arch,
        "config": config,
        "file": file.name,
        "size": file.stat().st_size,
        "sha256": sha256,
        "urls": list(urls),
        "default": default,
        # Filled from the checkpoint when `magn train` wrote it (export.safetensors), else
        # left for the model card (see weights/README.md).
        "provenance": {**{k: None for k in ("training_data", "steps", "hardware", "wall_time", "commit")},
                       **{k: v for k, v in (meta.get("provenance") or {}).items()
                          if k in PROVENANCE_KEYS}},
        "scores": [],
    }
    new_raw = copy.deepcopy(manifest.raw)
    new_raw["checkpoints"] = [c for c in new_raw.get("checkpoints", []) if c.get("name") not in replaces]
    new_raw["checkpoints"].append(raw_entry)
    parse_manifest(new_raw, manifest.path)  # refuse before touching any file

    replaced_files = {e.file for e in replaced}
    if copy_file:
        dest = manifest.shipped_dir / file.name
        if dest.exists() and not (dest.is_file() and os.path.samefile(dest, file)):
            if file.name not in replaced_files and file_sha256(dest) != sha256:
                raise MagnError(f"{dest} already exists with other content; not overwriting it")
            if file_sha256(dest) != sha256:
                _atomic_copy(file, dest)          # a newer export of a replaced entry's file
        elif not dest.exists():
            _atomic_copy(file, dest)
    save_manifest(new_raw, manifest.path)
    in_use = {c["file"] for c in new_raw["checkpoints"]}
    for old in replaced_files - in_use:
        (manifest.shipped_dir / old).unlink(missing_ok=True)
    return load_manifest(manifest.path).get(name)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _row_problem(row: dict) -> Optional[str]:
    """What makes a results row unusable for the manifest, or None. A NaN would make the
    manifest invalid JSON, a missing key or a text score a traceback."""
    if not isinstance(row.get("set"), str):
        return "no set name"
    for key in ("psnr", "ssim"):
        if not _finite(row.get(key)):
            return f"{key} is {row.get(key)!r}, not a finite number"
    for key in ("psnr_y", "ssim_y"):
        if key in row and not _finite(row[key]):
            return f"{key} is {row[key]!r}, not a finite number"
    degradation = row.get("degradation") or {}
    if not isinstance(degradation, dict):
        return "degradation is not a table"
    level = degradation.get("sigma", degradation.get("quality"))
    if level is not None and not _finite(level):
        return f"level is {level!r}, not a finite number"
    if row.get("n_images") is not None and not (isinstance(row["n_images"], int) and row["n_images"] >= 0):
        return f"n_images is {row['n_images']!r}"
    return None


def scores_from_results(rows: Sequence[dict], model: str) -> List[dict]:
    """Manifest score records from `magn eval --output results.json` rows of `model`;
    MagnError for a row of `model` that is not a well-formed results row."""
    scores = []
    for index, row in enumerate(rows):
        if row.get("model") != model:
            continue
        problem = _row_problem(row)
        if problem:
            raise MagnError(f"row {index + 1} ({model}) is not a `magn eval` results row: {problem}")
        degradation = row.get("degradation") or {}
        level = degradation.get("sigma", degradation.get("quality"))
        score = {"dataset": row["set"], "level": level, "channels": row.get("channels"),
                 "psnr": round(row["psnr"], 4), "ssim": round(row["ssim"], 6),
                 "n_images": row.get("n_images"),
                 "command": row.get("command") or "magn eval (the results file does not record its command)"}
        for key in ("psnr_y", "ssim_y"):
            if key in row:
                score[key] = round(row[key], 6 if key.startswith("ssim") else 4)
        scores.append({k: v for k, v in score.items() if v is not None})
    return scores


def record_scores(name: str, results_files: Sequence, *, manifest_path=None) -> WeightsEntry:
    """Replace a checkpoint's scores with its rows in `magn eval` JSON results files.

    Rows are matched by model name, so evaluate the checkpoint by its manifest name
    (`magn eval --model NAME`)."""
    manifest = load_manifest(manifest_path)
    manifest.get(name)  # MagnError for an unknown name
    scores: List[dict] = []
    for path in results_files:
        path = Path(path)
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise MagnError(f"cannot read results {path}: {e}") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise MagnError(f"{path} is not a JSON results file of `magn eval` (a list of rows)")
        try:
            found = scores_from_results(rows, name)
        except MagnError as e:
            raise MagnError(f"{path}: {e}") from None
        if not found:
            models = ", ".join(dict.fromkeys(str(r.get("model")) for r in rows)) or "none"
            raise MagnError(f"{path} has no rows for {name} (its models: {models}); "
                            f"evaluate the checkpoint under its manifest name, {name}")
        scores += found
    new_raw = copy.deepcopy(manifest.raw)
    item = next(i for i in new_raw["checkpoints"] if i.get("name") == name)
    item["scores"] = scores
    save_manifest(new_raw, manifest.path)
    return load_manifest(manifest.path).get(name)


def _atomic_copy(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
