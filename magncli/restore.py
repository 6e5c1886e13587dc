"""Restoring files: which files, which outputs, which model, and the per-image pipeline.

    jobs = plan_jobs(["photos/", "*.jpg"], out_dir=None, suffix="_magn", ext="png")
    restorer = Restorer(task="dejpeg", weights=None, options=InferenceOptions())
    record = restorer.restore_file(job.source, job.target)

The pipeline of one image: read -> float (H, W, C) -> restore_for_task (the task's view
of the input: a CFA or mosaic in GRBG phase; tiles -> model -> blend) -> same bit depth
-> atomic write, all under a claim of the output name taken before the file is read.

Many images, several at a time (`restore --jobs N`), each failure kept with its image;
with skip_existing, an output that exists already is an Outcome skipped, not failed:

    for outcome in restore_files(restorer, jobs, workers=2, skip_existing=True):
        print(outcome.index, outcome.record or outcome.skipped or outcome.error)
"""
from __future__ import annotations

import glob
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
from torch import nn

from magncli.degrade import AUTO_PATTERN, check_pattern
from magncli.errors import MagnError
from magncli.fileio import OutputExists, claim_output
from magncli.images import IMAGE_EXTENSIONS, Image, check_output_format, read_image, write_image
from magncli.inference import InferenceOptions, ProgressCallback, broken_down
from magncli.models.registry import facts
from magncli.tasks import Task, get_task, restore_for_task


# --------------------------------------------------------------------------- inputs
@dataclass
class Job:
    source: Path
    target: Optional[Path]
    error: Optional[str] = None       # set for an input argument that matched nothing


def _expand(arg: str, recursive: bool) -> Tuple[List[Path], Path]:
    """Files named by one argument (file, folder or glob) and the base their outputs mirror."""
    path = Path(arg)
    if path.is_file():
        return [path], path.parent
    if path.is_dir():
        found = path.rglob("*") if recursive else path.iterdir()
        return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS), path
    if glob.has_magic(arg):
        matches = sorted(Path(p) for p in glob.glob(arg, recursive=True))
        files = [p for p in matches if p.is_file()]
        prefix = arg[:min(i for i, ch in enumerate(arg) if ch in "*?[")]
        base = Path(prefix) if prefix.endswith(os.sep) else Path(prefix).parent
        return files, base
    if path.exists():   # a FIFO, socket or device: reading one could block or never end
        raise MagnError(f"{arg}: not a regular file or folder")
    raise MagnError(f"{arg}: no such file, folder or matching pattern")


def _inside_output(src: Path, base: Path, out_dir: Optional[str]) -> bool:
    """Whether `src` lies in an output folder placed inside the input folder `base`: those
    are this tool's outputs, and with an empty suffix nothing else tells them apart (every
    rerun of `-r` would restore the last run's outputs again)."""
    if out_dir is None:
        return False
    out, base = Path(out_dir).resolve(), base.resolve()
    return out != base and out.is_relative_to(base) and src.parent.resolve().is_relative_to(out)


def plan_jobs(inputs: Iterable[str], out_dir: Optional[str] = None, suffix: str = "_magn",
              ext: Optional[str] = "png", recursive: bool = False) -> List[Job]:
    """One Job per input image. Outputs go next to inputs, or under `out_dir` mirroring
    the folder structure below each input argument. Outputs of an earlier run (names
    ending in `suffix`) found inside folders are skipped, so re-running does not stack.
    An argument that matches nothing becomes a Job with `error` set, so that the other
    inputs are still processed."""
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise MagnError(f"{out_dir}: is a file; out_dir= names the folder the outputs go to")
    jobs: List[Job] = []
    seen: Dict[Path, Path] = {}
    for arg in inputs:
        try:
            files, base = _expand(str(arg), recursive)
        except MagnError as e:
            jobs.append(Job(Path(arg), None, str(e)))
            continue
        from_folder = Path(arg).is_dir() or glob.has_magic(str(arg))
        if not files:
            hint = " (pass recursive=True for subfolders)" if Path(arg).is_dir() and not recursive else ""
            jobs.append(Job(Path(arg), None, f"{arg}: no images found{hint}"))
            continue
        for src in files:
            if from_folder and suffix and src.stem.endswith(suffix):
                continue
            if from_folder and _inside_output(src, base, out_dir):
                continue
            out_ext = "." + ext.lstrip(".") if ext else src.suffix
            name = src.stem + suffix + out_ext
            target = (Path(out_dir) / src.parent.relative_to(base) / name) if out_dir else src.parent / name
            if target.resolve() == src.resolve():
                raise MagnError(f"{src}: the output would overwrite the input (set suffix=, ext= or out_dir=)")
            if target.resolve() in seen:
                raise MagnError(f"{src} and {seen[target.resolve()]} would both be written to {target}")
            seen[target.resolve()] = src
            jobs.append(Job(src, target))
    return jobs


# --------------------------------------------------------------------------- inputs
class NotRestorable(MagnError):
    """An input the task cannot take; said before the model runs, so that it is not
    mistaken for a model that broke down."""


def check_restorable(x: np.ndarray, task: Task, pattern: str) -> None:
    """x: (H, W, C) float. NotRestorable for values no image holds (NaN/Inf, as a float
    TIFF can) and, for demosaicing, for a full-colour image instead of a mosaic."""
    if not np.isfinite(x).all():
        raise NotRestorable("holds NaN or infinite values; magn restores images of finite values")
    # A mosaic holds one sample per pixel (a mosaic of another pattern too, which runs
    # and comes out wrong, as asked); a photo holds three in nearly every pixel.
    if task.mosaic and x.shape[2] == 3 and np.mean(np.count_nonzero(x, axis=2) > 1) > 0.5:
        raise NotRestorable(f"is a full-color image, not a Bayer mosaic ({pattern}): demosaicing takes a "
                            "one-channel CFA or a zero-filled 3-channel mosaic")


# --------------------------------------------------------------------------- models
@dataclass
class Restorer:
    """Restores images for one task, choosing a gray or color model per image.

    task: a Task, or its name (held as the Task from then on).
    weights: a checkpoint path/name/URL used for every image, or None for the task's
    published defaults (a gray model for gray images, a color model for color ones).
    model: an already-built nn.Module to use for every image instead (Python API).
    """
    task: Task
    weights: Optional[str] = None
    model: Optional[nn.Module] = None
    arch: str = "auto"
    level: Optional[float] = None          # the task's level: sigma (denoise), quality (dejpeg)
    pattern: str = AUTO_PATTERN            # Bayer pattern of mosaic inputs (demosaic); "auto": read off each
    options: InferenceOptions = field(default_factory=InferenceOptions)
    offline: Optional[bool] = None
    model_dir: Optional[str] = None
    quiet: bool = True
    force: bool = False                    # run a checkpoint that states another task, or on a
                                           # file the task's guard would return unchanged
    _models: Dict[Tuple, Tuple[nn.Module, str, InferenceOptions]] = field(default_factory=dict, repr=False)
    # One load per model even when threads ask at once (restore_files with workers > 1);
    # the models are then only read, in eval mode under inference_mode.
    _models_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self):
        # Settings that cannot work are refused here, once, rather than once per image.
        self.task = task = get_task(self.task)
        if self.level is not None:
            self.level = task.check_level(self.level)           # as results record it: 25.0 -> 25
        if task.mosaic and self.pattern != AUTO_PATTERN:
            self.pattern = check_pattern(self.pattern)
        self.options.resolve()

    def model_for(self, channels: int, level: Optional[float] = None) -> Tuple[nn.Module, str, InferenceOptions]:
        """(model, description, the options it runs with) serving `channels`-channel inputs
        of this task."""
        if self.model is not None:
            return self.model, getattr(self.model, "arch", type(self.model).__name__), self.options
        level = self.level if level is None else level
        key = (channels, level)
        with self._models_lock:
            if key not in self._models:
                self._models[key] = self._load(channels, level)
            return self._models[key]

    def _load(self, channels: int, level: Optional[float]) -> Tuple[nn.Module, str, InferenceOptions]:
        from magncli.checkpoints import model_from_checkpoint
        if self.weights and Path(self.weights).is_file():
            path = Path(self.weights)
        else:
            from magncli.weights import resolve_weights
            path = resolve_weights(self.weights, task=self.task.name, channels=channels, level=level,
                                   model_dir=self.model_dir, offline=self.offline, quiet=self.quiet)
        model = model_from_checkpoint(path, arch=self.arch)
        stated = self._stated_task(model)
        if stated is not None and stated != self.task.name and not self.force:
            raise MagnError(f"{Path(path).name} is a {stated} checkpoint, not one for {self.task.name}: "
                            "pass force=True to run it anyway")
        return model, Path(path).name, self._options_for(path)

    def _options_for(self, path: Path) -> InferenceOptions:
        """The options a checkpoint runs with: the user's, and what they left unsaid on a CPU
        (precision, tile) from the checkpoint's measured CPU defaults, where the manifest
        publishes this very file (weights/manifest.json, cpu_defaults)."""
        options = self.options
        if options.precision is not None and options.tile is not None:
            return options
        device, _ = options.resolve()
        if device.type != "cpu":
            return options
        from magncli.devices import cpu_has_native_bf16
        from magncli.weights import cpu_defaults_for
        defaults = cpu_defaults_for(path)
        changes = {}
        if options.precision is None and defaults.get("precision") == "bf16" and cpu_has_native_bf16():
            changes["precision"] = "bf16"
        if options.tile is None and options.tiling == "blend" and "tile" in defaults:
            changes["tile"] = defaults["tile"]
        return replace(options, **changes) if changes else options

    def _stated_task(self, model: nn.Module) -> Optional[str]:
        """The task a checkpoint says it serves: its metadata ("task", which training
        writes, or a "serves" record), else the manifest entry of a published name."""
        meta = getattr(model, "checkpoint_meta", None) or {}
        serves = meta.get("serves") if isinstance(meta.get("serves"), dict) else {}
        stated = meta.get("task") or serves.get("task")
        if stated is None and self.weights and not Path(self.weights).is_file():
            from magncli.weights.manifest import load_manifest
            entry = load_manifest().find(self.weights)
            stated = entry.task if entry is not None else None
        return stated

    def _unimprovable(self, level: Optional[float], stated_facts: dict) -> Optional[str]:
        """Why the published default models would not improve this file (the task's
        guard, measured for them only), or None: always None with force, with other
        weights or a given model, or when the file states no level."""
        task = self.task
        if self.force or self.weights or self.model is not None or task.unimprovable is None or level is None:
            return None
        return task.unimprovable(level, stated_facts)

    def restore(self, image: Image, level: Optional[float] = None,
                progress: Optional[ProgressCallback] = None) -> Tuple[Image, dict]:
        """Restore one decoded image; returns the restored Image and a record of what ran.
        A file the published models would make worse (the task's guard: a q100 4:4:4
        JPEG) comes back as it is, the record's "unchanged" saying why, unless force.
        progress(done, total): tile passes, after each batch (see magncli.inference)."""
        task = self.task
        x = image.to_float()                                                  # (H, W, C)
        check_restorable(x, task, self.pattern)
        info = {"task": task.name}
        level = self.level if level is None else level
        source = None
        if level is not None:
            source = "given"
        elif task.level_from_image is not None:
            # The file may say how it was degraded (a JPEG's tables): no need to ask the user.
            stated = task.level_from_image(image)
            if stated is not None:
                level, source = stated
        if level is not None and task.level_key:
            info[task.level_key] = level
        if task.level_plane is not None:
            # What a level-conditioned model was told: e.g. noise of unknown strength (no
            # --sigma), or a PNG saved from a JPEG; the model then runs blind.
            info[f"{task.level_key}_source"] = source or "unknown"
        stated_facts = task.facts_from_image(image) if task.facts_from_image is not None else {}
        info.update(stated_facts)                           # a JPEG's subsampling
        unchanged = self._unimprovable(level, stated_facts)
        if unchanged is not None:
            # The published models would make this file worse: it is returned as decoded.
            info["unchanged"] = unchanged
            return image, info
        pattern = task.input_pattern(x, self.pattern)       # a mosaic's pattern, given or detected
        if pattern is not None:
            info["pattern"] = pattern
            info["pattern_source"] = "detected" if self.pattern == AUTO_PATTERN else "given"
        channels = task.model_channels(image.channels)          # a CFA needs a 3-channel model
        model, name, options = self.model_for(channels, level)
        need = facts(model).in_channels or channels
        info["model"] = name
        if need == 3 and channels == 1:     # only a color model was given (restore_for_task)
            info["note"] = "gray image restored with a color model"
        elif need != channels:
            raise MagnError(f"{name} is a gray ({need}-channel) model; the image has {channels} "
                            "channels (pass weights= with a color model)")
        info["precision"] = options.precision or "fp32"
        y = restore_for_task(model, x, task, pattern=pattern, level=level, options=options,
                             progress=progress)
        lo, hi = float(np.min(y)), float(np.max(y))                           # NaN stays NaN
        if broken_down(lo, hi):
            raise MagnError(f"{name} broke down on this image: its output spans {lo:.3g} to {hi:.3g}, "
                            "where an image lies in 0-1; refused rather than clipped (please report "
                            "the image and the weights)")
        return image.with_pixels(y), info

    def restore_file(self, source, target, *, overwrite: bool = False, jpeg_quality: int = 95,
                     progress: Optional[ProgressCallback] = None) -> dict:
        """Read, restore and write one file; returns a JSON-ready record. progress(done,
        total) after each batch of tile passes.

        The output name is claimed before any work (see fileio.claim_output): an existing
        `target` (without `overwrite`), or one that another magn process is making, is a
        MagnError before the image is even read."""
        start = time.perf_counter()
        check_output_format(target)
        with claim_output(target, overwrite):
            image = read_image(source)
            try:
                restored, info = self.restore(image, progress=progress)
            except NotRestorable as e:
                raise MagnError(f"{source}: {e}") from None
            write_image(target, restored, overwrite=overwrite, jpeg_quality=jpeg_quality)
        h, w = image.pixels.shape[:2]
        return {"input": str(source), "output": str(target), "width": w, "height": h,
                "channels": image.channels, "bit_depth": image.bit_depth,
                "seconds": round(time.perf_counter() - start, 3), **info}


# --------------------------------------------------------------------------- many files
@dataclass
class Outcome:
    """What became of one job: its record (Restorer.restore_file's), why it was skipped,
    or its error."""
    index: int                          # position of the job in the list given
    job: Job
    record: Optional[dict] = None
    error: Optional[Exception] = None
    skipped: Optional[str] = None       # why nothing was done (skip_existing: "the output exists")


SKIPPED_EXISTING = "the output exists"


class _Abandoned(BaseException):
    """Stops a worker thread at its next tile pass once the run is given up (Ctrl-C)."""


def restore_files(restorer: Restorer, jobs: List[Job], *, workers: int = 1, overwrite: bool = False,
                  skip_existing: bool = False, jpeg_quality: int = 95,
                  progress: Optional[Callable[[int, int, int], None]] = None) -> Iterator[Outcome]:
    """Restore every job, `workers` images at a time; yields one Outcome per job as it
    finishes: in input order with one worker, in order of completion with more (sort
    by Outcome.index for input order).

    Every job is attempted: an image's failure (any Exception) is its Outcome's error,
    never raised. skip_existing: a job whose output exists (before its work, or written
    by another process meanwhile) is an Outcome with `skipped` set, its file untouched,
    so that rerunning a stopped batch finishes it. progress(index, done, total) reports an image's tile passes, from the
    thread restoring it.

    With workers > 1 the images run in threads of this process sharing the restorer's
    models (torch releases the GIL), and torch's intra-op threads are split between
    them for the run (parallel.split_threads), so that N images at once use the cores
    that one would. CPU only: on CUDA, one image at a time already fills the device,
    and its OOM fallback moves the model. If the caller stops iterating (Ctrl-C), the
    images in flight stop at their next tile pass and no new one starts."""
    if workers < 1:
        raise MagnError(f"workers must be >= 1 (got {workers})")
    if overwrite and skip_existing:
        raise MagnError("overwrite=True replaces the outputs that skip_existing=True keeps: pass one of them")
    if workers > 1 and restorer.options.resolve()[0].type != "cpu":
        raise MagnError(f"workers={workers} restores images side by side on the CPU's cores; "
                        "on other devices pass workers=1")
    if workers == 1 or len(jobs) < 2:
        for index, job in enumerate(jobs):
            yield _restore_one(restorer, index, job, overwrite, jpeg_quality, progress, skip_existing)
        return
    yield from _restore_in_threads(restorer, jobs, min(workers, len(jobs)), overwrite, jpeg_quality, progress,
                                   skip_existing)


def _restore_one(restorer: Restorer, index: int, job: Job, overwrite: bool, jpeg_quality: int,
                 progress: Optional[Callable[[int, int, int], None]], skip_existing: bool = False,
                 abandoned: Optional[threading.Event] = None) -> Outcome:
    def report(done: int, total: int) -> None:
        if abandoned is not None and abandoned.is_set():
            raise _Abandoned()
        if progress is not None:
            progress(index, done, total)

    try:
        if job.error:
            raise MagnError(job.error)
        record = restorer.restore_file(job.source, job.target, overwrite=overwrite, jpeg_quality=jpeg_quality,
                                       progress=report if progress or abandoned else None)
        return Outcome(index, job, record=record)
    except OutputExists as e:
        if skip_existing:
            return Outcome(index, job, skipped=SKIPPED_EXISTING)
        return Outcome(index, job, error=e)
    except Exception as e:  # noqa: BLE001 - one image's failure never stops the rest
        return Outcome(index, job, error=e)


def _restore_in_threads(restorer, jobs, workers, overwrite, jpeg_quality, progress,
                        skip_existing) -> Iterator[Outcome]:
    from magncli.parallel import split_threads
    import torch

    abandoned = threading.Event()
    with split_threads(workers) as share:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="magn-restore",
                                  initializer=torch.set_num_threads, initargs=(share,))
        try:
            pending = {pool.submit(_restore_one, restorer, index, job, overwrite, jpeg_quality, progress,
                                   skip_existing, abandoned) for index, job in enumerate(jobs)}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: f.result().index):
                    yield future.result()
        finally:
            # Normally nothing is left; after Ctrl-C (or a caller that stopped early),
            # queued images never start and running ones stop at their next tile pass.
            abandoned.set()
            pool.shutdown(wait=True, cancel_futures=True)
