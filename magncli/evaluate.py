"""The engine of `magn eval`: degrade benchmark sets by the protocol, restore them with
each method (magncli.eval_methods: the baselines, and models run as `magn restore` runs
them), score, and write tables.

run_eval returns one row (a dict) per model x set x level, each with its per-image scores
under "images"; magncli.results presents them (tables, files, the sheet).
"""
from __future__ import annotations

import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from magncli import datasets
from magncli.degrade import DEFAULT_PATTERN, DEFAULT_SEED, DEFAULT_SUBSAMPLING, cfa_to_mosaic
from magncli.errors import MagnError
from magncli.eval_methods import Method, methods_by_channels
from magncli.fileio import check_writable, write_file_atomic
from magncli.images import encode_float_image
from magncli.metrics import psnr, psnr_ssim
from magncli.results import write_sheet
from magncli.tasks import Degradation, Task, get_task
from magncli.version import git_commit


# --------------------------------------------------------------------------- memory

def _uses_cuda(method: Method) -> bool:
    if method.device is None:  # a baseline: CPU only
        return False
    if method.device == "auto":
        import torch

        return torch.cuda.is_available()
    return method.device.startswith("cuda")


def _reset_peak_memory(method: Method) -> None:
    if _uses_cuda(method):
        import torch

        torch.cuda.reset_peak_memory_stats()


def _peak_memory_mb(method: Method) -> Optional[float]:
    """CUDA: the most memory torch allocated during the row. CPU: the process's peak
    resident memory so far (a high-water mark, including everything loaded before)."""
    if _uses_cuda(method):
        import torch

        return torch.cuda.max_memory_allocated() / 2 ** 20
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10  # bytes vs KiB


# --------------------------------------------------------------------------- run_eval

def _channels_for(task: Task, set_name: str, test_set, channels: Optional[str],
                  first_image: Path) -> str:
    """The channel mode ("gray"/"color") a set is scored in for `task`."""
    if channels is not None and channels not in datasets.CHANNELS:
        raise MagnError(f"unknown channels {channels!r}; use gray or color")
    if test_set is None:  # a plain folder: as asked, else as its first image is stored
        if channels is not None:
            return channels
        return "gray" if datasets.read_raw(first_image).shape[2] == 1 else "color"
    served = test_set.tracks.get(task.name, ())
    if channels is None and served:
        return served[0]
    if channels in served:
        return channels
    wanted = f"{task.name} ({channels})" if channels else task.name
    raise MagnError(f"{set_name} is not a test set for {wanted}; "
                    f"sets for it: {', '.join(datasets.sets_for(task.name, channels))}")


def _set_note(test_set, mode: str) -> str:
    """What a reader of the table must know about a set's numbers ("" for nothing)."""
    notes = [test_set.note] if test_set is not None and test_set.note else []
    if test_set is not None and mode == "gray" and test_set.stored == "color":
        notes.append("gray = BT.601 studio Y of the RGB files")
    return "; ".join(notes)


def _recorded_degradation(inputs: Path, task: Task) -> Optional[Degradation]:
    """The degradation that `magn degrade` recorded in inputs/manifest.json, or None for a
    folder without one (a paper's shipped inputs)."""
    path = Path(inputs) / "manifest.json"
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))["degradation"]
        made_by, key = recorded["task"], task.level_key
        level, seed, pattern = recorded.get(key) if key else None, recorded.get("seed"), recorded.get("pattern")
        subsampling = recorded.get("subsampling") or DEFAULT_SUBSAMPLING     # older manifests: the protocol's
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise MagnError(f"{path}: not a manifest of `magn degrade` (no degradation recorded)") from None
    if made_by != task.name:
        raise MagnError(f"{inputs} holds {made_by} inputs ({path.name}), not {task.name} ones")
    return task.degradation(level, DEFAULT_SEED if seed is None else seed, pattern or DEFAULT_PATTERN, subsampling)


def _given_degradations(inputs, task: Task, asked: List[Degradation], levels_given: bool) -> List[Degradation]:
    """The degradation of given inputs: what their manifest.json records. A level or
    pattern asked for that disagrees is an error: the rows would be labelled with the
    wrong level (sigma-25 inputs scored as sigma 50)."""
    recorded = _recorded_degradation(Path(inputs), task)
    if recorded is None:
        return asked
    for wanted in asked:
        differs = ((levels_given and wanted.level != recorded.level) or wanted.pattern != recorded.pattern
                   or wanted.subsampling != recorded.subsampling)
        if differs:
            raise MagnError(f"{inputs} holds inputs of {recorded.label} (its manifest.json), "
                            f"not {wanted.label}; drop levels= or give the recorded one")
    return [recorded]


def _read_given_inputs(inputs: Path, stems: List[str], degradation: Degradation
                       ) -> List[np.ndarray]:
    """Already-degraded images (e.g. `magn degrade` output or a paper's shipped inputs),
    paired with the ground truth by file name stem. One-channel mosaics are CFA files."""
    by_stem = {p.stem: p for p in datasets.list_images(inputs)}
    missing = [s for s in stems if s not in by_stem]
    if missing:
        raise MagnError(f"{inputs} has no input for {missing[0]} "
                        f"({len(missing)} of {len(stems)} ground-truth images unmatched)")
    images = [datasets.load_image(by_stem[s]) for s in stems]
    if degradation.task.mosaic:
        images = [cfa_to_mosaic(x, degradation.pattern) if x.shape[2] == 1 else x
                  for x in images]
    return images


def _check_same_size(what: str, name: str, image: np.ndarray, truth: np.ndarray) -> None:
    if image.shape != truth.shape:
        raise MagnError(f"size mismatch for {name}: {what} is {_describe(image)}, "
                        f"ground truth is {_describe(truth)}")


def _describe(img: np.ndarray) -> str:
    return f"{img.shape[1]}x{img.shape[0]}x{img.shape[2]}"


def _save_image(save_dir: Path, method: Method, set_name: str, label: str, stem: str,
                image: np.ndarray, overwrite: bool) -> None:
    safe_model = "".join(c if c.isalnum() or c in "-_." else "_" for c in method.name)
    level_folder = label.replace("σ", "sigma")  # ASCII folder names
    path = save_dir / safe_model / set_name / level_folder / f"{stem}.png"
    write_file_atomic(path, encode_float_image(image, "png"), overwrite)


def run_eval(task, sets: Sequence[str], levels: Sequence = (), models: Sequence[str] = ("input",),
             seed: int = 0, data_root=None, options=None, save_images=None,
             quantize: bool = False, channels: Optional[str] = None,
             pattern: str = DEFAULT_PATTERN, subsampling: str = DEFAULT_SUBSAMPLING, inputs=None, sheet=None,
             overwrite: bool = False,
             progress: Optional[Callable[[str], None]] = None, blind: bool = False) -> List[dict]:
    """Evaluate `models` on `sets` at each level, following docs/protocols.md.

    task: a Task, or its name (tasks.TASKS). sets: set names or folders. levels: sigmas
    or JPEG qualities (defaults per task); demosaic takes `pattern` instead; dejpeg
    encodes color at `subsampling` ("4:2:0", the protocol's, or "4:4:4", "4:2:2"). options: the
    InferenceOptions for models (tile, overlap, ensemble, device, precision). inputs: a
    folder of already-degraded images to use instead of degrading (one set, one level).
    save_images: a folder for every restored image (8-bit PNG). sheet: a PNG of crops.
    blind: each model with a level map is also scored not told the level ("NAME (blind)").
    Returns one dict per model x set x level (see the module docstring)."""
    task = get_task(task)
    if not sets:
        raise MagnError("no test sets given")
    if not models:
        raise MagnError("no models given")
    degradations = task.degradations(list(levels or ()), seed, pattern, subsampling)
    if inputs is not None:
        degradations = _given_degradations(inputs, task, degradations, bool(levels))
    if inputs is not None and (len(sets) != 1 or len(degradations) != 1):
        raise MagnError("given inputs (inputs=) are for one set at one level")
    if sheet is not None:
        if Path(sheet).suffix.lower() != ".png":     # it is a PNG: another name would lie
            raise MagnError(f"{sheet}: the sheet is a PNG image; give it a .png name")
        check_writable(sheet, overwrite)
    # Every set is found, and every model loaded, before any is scored: a misspelt last
    # set or model must not cost the hours of the ones before it.
    resolved = [datasets.resolve_set(set_spec, data_root) for set_spec in sets]
    set_files = [datasets.list_images(folder) for _, folder, _ in resolved]
    modes = [_channels_for(task, set_name, test_set, channels, files[0])
             for (set_name, _, test_set), files in zip(resolved, set_files)]
    methods_for = methods_by_channels(task, models, modes, options, blind)
    report = progress or (lambda message: None)
    commit = git_commit()
    sheet_rows = []
    rows = []
    for (set_name, folder, test_set), files, mode in zip(resolved, set_files, modes):
        methods = methods_for(mode)
        stems = [p.stem for p in files]
        truths = [datasets.load_ground_truth(p, mode) for p in files]  # float32 HxWxC
        for degradation in degradations:
            label = degradation.label
            if inputs is not None:
                degraded = _read_given_inputs(Path(inputs), stems, degradation)
            else:
                degraded = [degradation.apply(t) for t in truths]
            for stem, image, truth in zip(stems, degraded, truths):
                _check_same_size("input", stem, image, truth)
            first_outputs = []  # (model, output, PSNR) of the set's first image
            for method in methods:
                save = None if save_images is None else partial(
                    _save_image, Path(save_images), method, set_name, label, overwrite=overwrite)
                row, first_output = evaluate_method(method, stems, degraded, truths,
                                                    degradation, quantize, save)
                engine = options.describe(method.model) if options is not None else {}
                row.update(set=set_name, channels=mode, inputs=str(inputs) if inputs else None,
                           note=_set_note(test_set, mode),
                           **{k: engine.get(k) for k in ("tile", "overlap", "tiling", "ensemble", "precision")},
                           commit=commit, **({"checkpoint": method.checkpoint} if method.checkpoint else {}))
                rows.append(row)
                first_outputs.append((method.name, first_output, row["images"][0]["psnr"]))
                report(f"{set_name} {label} {method.name}: {row['psnr']:.2f} dB, "
                       f"SSIM {row['ssim']:.4f}, {row['seconds_per_image']:.3f} s/img")
            if sheet is not None:
                input_psnr = psnr(degraded[0], truths[0], quantize=quantize, clamp=False)
                cells = ([("input", degraded[0], input_psnr)]
                         + [c for c in first_outputs if c[0] != "input"]  # input is cell one
                         + [("ground truth", truths[0], None)])
                sheet_rows.append((f"{set_name} {label}: {stems[0]}", cells))
    if sheet is not None:
        write_sheet(sheet, sheet_rows, overwrite)
    return rows


def evaluate_method(method: Method, stems, degraded, truths, degradation: Degradation,
                    quantize: bool = False,
                    save: Optional[Callable[[str, np.ndarray], None]] = None
                    ) -> Tuple[dict, np.ndarray]:
    """One row: restore and score every image of a set at one level; `save(stem, output)`
    keeps each output. Returns the row and the first image's output (for the sheet)."""
    # Color results of some tasks (JPEG) are scored on RGB and on Y (the protocol's "RGB, and Y").
    score_y = degradation.task.scored_on_y and truths[0].shape[2] == 3
    _reset_peak_memory(method)
    per_image, seconds, first_output = [], 0.0, None
    for stem, image, truth in zip(stems, degraded, truths):
        start = time.perf_counter()
        output = method.restore(image, degradation)
        seconds += time.perf_counter() - start
        _check_same_size(f"the output of {method.name}", stem, output, truth)
        record = {"name": stem}
        record["psnr"], record["ssim"] = psnr_ssim(output, truth, quantize=quantize,
                                                   clamp=method.clamp_output)
        if score_y:
            record["psnr_y"], record["ssim_y"] = psnr_ssim(output, truth, quantize=quantize,
                                                           to_y=True, clamp=method.clamp_output)
        per_image.append(record)
        if save is not None:
            save(stem, output)
        if first_output is None:
            first_output = output
    row = {"task": degradation.task.name, "model": method.name, "level": degradation.label}
    for key in ("psnr", "ssim", "psnr_y", "ssim_y"):
        if key in per_image[0]:
            row[key] = float(np.mean([r[key] for r in per_image]))
    row.update(n_images=len(per_image), seconds_per_image=seconds / len(per_image),
               peak_mem_mb=_peak_memory_mb(method), degradation=degradation.as_dict(),
               seed=degradation.seed, quantize=quantize, images=per_image)
    return row, first_output
