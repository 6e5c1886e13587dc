"""Training configuration: recipes (TOML files in train/), overrides, and the config file
written into every run folder.

    config = load_config(["train/denoise-gray-blind.toml"], {"steps": 1000})
    write_config(config, run_dir / "config.toml")

A recipe is a flat TOML table of TrainConfig fields plus an optional [model] table of
architecture overrides (n_feats, ...). `extends = "other.toml"` (relative to the recipe)
reads that recipe first. Later sources override earlier ones: recipe < --config files in
order < command-line flags. Unknown keys are errors, so a typo never goes unnoticed.
"""
from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from magncli.degrade import BAYER_PATTERNS, check_seed
from magncli.errors import MagnError
from magncli.models.registry import resolve_config
from magncli.tasks import TASKS, get_task

SCHEDULES = ("cosine", "multistep", "constant")
LOSSES = ("mse", "relative-mse", "psnr-gain")
# Keys that each replace another: giving one (in a later recipe or a flag) drops the other.
EXCLUSIVE = {"sigma": "sigma_range", "sigma_range": "sigma", "val": "val_holdout", "val_holdout": "val",
             "qualities": "quality_range", "quality_range": "qualities"}
# What --resume may change: the run's speed and bookkeeping, and the gradient clipping (a
# guard that a run on the edge of breaking down may need; each resume is logged). threads
# and precision change the speed, not the data or the optimisation (bf16 changes rounding;
# each resume's precision is recorded in the log and the export's provenance). steps only
# where the schedule does not depend on it (RESUMABLE_STEPS): it is the cosine's span.
RESUMABLE = {"grad_clip", "grad_clip_median", "val_every", "ckpt_every", "log_every", "workers", "device", "data",
             "val", "threads", "precision", "compile"}
RESUMABLE_STEPS = ("constant", "multistep")


def _is_focus(focus, lo: float, hi: float) -> bool:
    """A level focus [lo, hi, probability] inside the level's bounds [lo, hi]."""
    return len(focus) == 3 and lo <= focus[0] <= focus[1] <= hi and 0 <= focus[2] <= 1


@dataclass
class TrainConfig:
    """Every setting of a training run. Defaults are the paper's (MAGN Sec. IV-A)."""

    task: str = "denoise"                 # a name of tasks.TASKS: denoise | dejpeg | demosaic
    data: str = ""                        # folder of clean images, or a folder name under the data root
    val: str = ""                         # validation folder or test-set name ("" = no validation)
    val_holdout: int = 0                  # validate on N images held out of `data` instead (never trained on)
    init_from: str = ""                   # warm start: weights (file or published name) to start from
    arch: str = "magn"                    # a registry name or variant: magn, magn-tiny-local, dagl, ...
    channels: int = 1                     # 1 gray, 3 color (demosaic: 3)
    model: Dict[str, Any] = field(default_factory=dict)  # architecture config overrides

    # Optimisation: Adam, MSE loss (eq. 14).
    batch: int = 32                       # global batch: split evenly over DDP ranks
    patch: int = 64
    steps: int = 300_000
    lr: float = 1e-4
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "cosine"              # cosine (to min_lr after warmup) | multistep | constant
    warmup_steps: int = 0
    min_lr: float = 1e-6                  # cosine: the final learning rate
    milestones: List[int] = field(default_factory=list)  # multistep: steps where lr *= gamma
    gamma: float = 0.5
    grad_clip: float = 0.0                # max global gradient norm; 0 = off
    # Adaptive clip: at most this many times the median norm of the last steps (a rare
    # gradient 100x the usual one wrecked CPU runs that a fixed clip of 1.0 never
    # touched: denoising norms are about 0.03); 0 = off. With grad_clip, the tighter wins.
    grad_clip_median: float = 0.0
    ema_decay: float = 0.999
    loss: str = "mse"                     # mse (the paper's) | relative-mse (each sample's error over
                                          # its input's: every level alike in dB) | psnr-gain (minus
                                          # the mean PSNR gain in dB; training/loop.py)
    relative_floor: float = 1e-5          # relative-mse: added to each input's MSE (1e-5: 50 dB); a
                                          # higher one weighs the low levels less (all alike below it)

    # Degradation (one of each exclusive pair; see EXCLUSIVE).
    sigma: Optional[float] = None         # denoise: one noise level (0-255 scale) ...
    sigma_range: Optional[List[float]] = None   # ... or blind: uniform in [lo, hi] per image
    # denoise with sigma_range: [lo, hi, p] draws from [lo, hi] with probability p instead
    # (more clean and nearly clean patches, which a blind model must leave alone); None = off.
    sigma_focus: Optional[List[float]] = None
    qualities: Optional[List[int]] = None       # dejpeg: a quality drawn from this list ...
    quality_range: Optional[List[int]] = None   # ... or uniform integers in [lo, hi] per image
    # dejpeg with quality_range: [lo, hi, p] draws from [lo, hi] with probability p instead
    # (oversampling the benchmark's low qualities inside a whole-range model); None = off.
    quality_focus: Optional[List[float]] = None
    pattern: str = "grbg"                 # demosaic: a Bayer pattern, or "random" (all four)
    # Color patches: scale the chroma (RGB minus its luma) by a factor uniform in [lo, hi]
    # (clipped to [0, 1]); None = off. Saturated colours are rare in CBSD432.
    saturation_range: Optional[List[float]] = None
    # ... on this share of the patches only (the others keep their colours); 1 = all.
    saturation_share: float = 1.0
    # Clean patches: add grain, Gaussian noise independent in each channel and pixel, of a
    # sigma (8-bit units) uniform in [lo, hi], before the degradation; None = off. Film
    # scans such as McMaster's carry it, and a demosaicer that copies G's detail into R
    # and B copies G's grain too.
    grain_range: Optional[List[float]] = None
    # Clean patches: cut from the image shrunk by a factor uniform in [lo, hi] (0 < lo <=
    # hi <= 1, area averaging); None = off. CBSD432's photos are soft JPEGs; shrunk, they
    # show the finer detail of film scans such as McMaster's.
    scale_range: Optional[List[float]] = None
    # demosaic: each sample keeps the hardest of this many random patches for OpenCV
    # bilinear demosaicing (hard-patch mining, training/data.py); 1 = off. Demosaicing nets
    # fail on what a uniform sample seldom shows: thin lines, saturated colour edges, moire.
    hard_patches: int = 1
    # A model with a level map ([model] level_input = true): the share of samples whose map
    # says "unknown", so that it also restores files that do not state their level.
    level_unknown: float = 0.1

    # Validation through the eval engine; PSNR on val_images images cropped to val_crop.
    val_every: int = 5000
    val_levels: Optional[List[float]] = None    # sigmas / qualities to score (default: per task)
    val_crop: int = 0                     # centre crop of each validation image; 0 = whole
    val_images: int = 0                   # use the first N validation images; 0 = all
    val_seed: int = 0                     # noise seed of validation inputs, as `magn eval --seed`

    ckpt_every: int = 1000
    log_every: int = 100
    workers: int = 4                      # DataLoader worker processes per rank
    device: str = "auto"
    precision: str = "fp32"               # fp32 | bf16 (CUDA, or a CPU with native bf16) | fp16 (CUDA)
    threads: int = 0                      # torch threads; 0 = auto: the cores nothing else keeps busy
    compile: bool = False                 # torch.compile the training forward (11-14% faster on the CPU
                                          # after a ~20 s compile: worth it for long runs)
    backend: Optional[str] = None         # graph-attention backend; None = per device
    seed: int = 0

    # ------------------------------------------------------------------ derived
    # The recipe's settings of a task's level are named after the level (sigma, qualities):
    # each pair below is one setting of the level(s) trained for and one of a [lo, hi] range.
    def levels(self) -> Dict[str, Any]:
        """What the model is trained for, as checkpoint metadata records it."""
        key = get_task(self.task).level_key
        if key == "sigma":
            return {"sigma": self.sigma} if self.sigma is not None else {"sigma_range": self.sigma_range}
        if key == "quality":
            return {"qualities": self.qualities} if self.qualities else {"quality_range": self.quality_range}
        return {"pattern": self.pattern}

    def level_input(self) -> bool:
        """Whether the model takes the level map (its resolved config's level_input)."""
        return bool(resolve_config(self.arch, in_channels=self.channels, **self.model)[1].get("level_input"))

    def validation_levels(self) -> List[float]:
        """The levels validation scores (the mean is the run's validation PSNR): those
        asked for, else those trained for, else the task's default levels inside the
        trained range (its middle if none is)."""
        task = get_task(self.task)
        if task.level_key is None:
            return []
        if self.val_levels:
            return list(self.val_levels)
        if task.level_key == "sigma":
            trained, span = ([self.sigma] if self.sigma is not None else None), self.sigma_range
        else:
            trained, span = self.qualities, self.quality_range
        if trained:
            return list(trained)
        lo, hi = span
        middle = (lo + hi) // 2 if task.level_key == "quality" else (lo + hi) / 2   # qualities are integers
        return [v for v in task.default_levels if lo <= v <= hi] or [middle]

    def check(self) -> "TrainConfig":
        """Raise MagnError for any setting that cannot work; returns self."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise MagnError(message)

        need(self.task in TASKS, f"unknown task {self.task!r}; tasks: {', '.join(TASKS)}")
        task = get_task(self.task)
        need(self.channels in (1, 3), f"channels must be 1 or 3, not {self.channels}")
        try:  # the model is built only after the run folder exists: fail before that
            resolve_config(self.arch, in_channels=self.channels, **self.model)
        except KeyError as e:
            raise MagnError(e.args[0]) from None
        need(not self.level_input() or task.level_plane is not None,
             f"level_input: {task.name} has no level map (denoise and dejpeg have one)")
        need(0.0 <= self.level_unknown <= 1.0, f"level_unknown must be in [0, 1], not {self.level_unknown}")
        need(self.hard_patches >= 1, f"hard_patches must be >= 1 (1 = off), not {self.hard_patches}")
        # Ranked by the degraded input's own error, noise or JPEG would pick the strongest
        # level, not the hardest content: only a mosaic has a naive restoration to rank by.
        need(self.hard_patches == 1 or task.mosaic,
             f"hard_patches: only demosaicing ranks patches (by OpenCV bilinear), not {task.name}")
        need(0.0 < self.saturation_share <= 1.0,
             f"saturation_share must be in (0, 1], not {self.saturation_share}")
        need(self.scale_range is None or (len(self.scale_range) == 2
                                           and 0 < self.scale_range[0] <= self.scale_range[1] <= 1),
             f"scale_range must be [lo, hi] with 0 < lo <= hi <= 1, not {self.scale_range}")
        for name in ("saturation_range", "grain_range"):     # [lo, hi] factors / sigmas, or None
            lo_hi = getattr(self, name)
            need(lo_hi is None or (len(lo_hi) == 2 and 0 <= lo_hi[0] <= lo_hi[1]),
                 f"{name} must be [lo, hi] with 0 <= lo <= hi, not {lo_hi}")
        need(task.model_channels(self.channels) == self.channels,
             f"{task.name} trains {task.model_channels(self.channels)}-channel models (channels 3)")
        need(self.batch >= 1 and self.patch >= 8 and self.steps >= 1,
             "batch and steps must be positive and patch at least 8")
        need(self.patch % 4 == 0, f"patch must be a multiple of 4 (the patch graph's stride), not {self.patch}")
        need(self.lr > 0 and len(self.betas) == 2, "lr must be > 0 and betas two numbers")
        # A negative floor or factor would drive the learning rate below zero (ascent).
        need(self.min_lr >= 0, f"min_lr must be >= 0, not {self.min_lr}")
        need(self.gamma > 0, f"gamma must be > 0, not {self.gamma}")
        need(self.warmup_steps >= 0, f"warmup_steps must be >= 0, not {self.warmup_steps}")
        for name in ("seed", "val_seed"):       # numpy's RandomState takes 0 .. 2**32 - 1
            check_seed(getattr(self, name), name)
        need(self.loss in LOSSES, f"unknown loss {self.loss!r}; losses: {', '.join(LOSSES)}")
        need(self.relative_floor > 0, f"relative_floor must be > 0, not {self.relative_floor}")
        need(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; schedules: {', '.join(SCHEDULES)}")
        need(0.0 <= self.ema_decay < 1.0, "ema_decay must be in [0, 1)")
        need(self.grad_clip >= 0 and (self.grad_clip_median == 0 or self.grad_clip_median >= 1),
             "grad_clip must be >= 0, grad_clip_median 0 (off) or >= 1")
        need(min(self.val_every, self.ckpt_every, self.log_every) >= 1,
             "val_every, ckpt_every and log_every must be >= 1")
        need(self.workers >= 0, "workers must be >= 0")
        need(self.threads >= 0, "threads must be >= 0")
        need(self.val_holdout >= 0, "val_holdout must be >= 0")
        need(not (self.val and self.val_holdout),
             "give either val (a folder or set) or val_holdout (images held out of data), not both")
        need(self.val_crop == 0 or self.val_crop >= 16, "val_crop must be 0 (whole images) or >= 16")
        if task.level_key == "sigma":
            need((self.sigma is None) != (self.sigma_range is None),
                 f"{task.name} needs exactly one of sigma (e.g. 25) and sigma_range (e.g. 0,55)")
            if self.sigma_range is not None:
                need(len(self.sigma_range) == 2 and 0 <= self.sigma_range[0] <= self.sigma_range[1],
                     f"sigma_range must be lo,hi with 0 <= lo <= hi, not {self.sigma_range}")
            else:
                need(math.isfinite(self.sigma) and self.sigma >= 0, f"sigma must be >= 0, not {self.sigma}")
            if self.sigma_focus is not None:
                f = self.sigma_focus
                need(self.sigma_range is not None and _is_focus(f, 0, math.inf),
                     f"sigma_focus must be [lo, hi, probability] beside a sigma_range, not {f}")
        if task.level_key == "quality":
            need((self.qualities is None) != (self.quality_range is None),
                 f"{task.name} needs exactly one of qualities (e.g. [10, 20, 30, 40]) and quality_range (e.g. 10,40)")
            chosen = self.qualities or self.quality_range
            need(len(chosen) >= 1 and all(1 <= int(q) <= 100 and int(q) == q for q in chosen),
                 f"JPEG qualities must be integers from 1 to 100, not {chosen}")
            if self.quality_range is not None:
                need(len(chosen) == 2 and chosen[0] <= chosen[1], f"quality_range must be lo,hi, not {chosen}")
            if self.quality_focus is not None:
                f = self.quality_focus
                need(self.quality_range is not None and _is_focus(f, 1, 100),
                     f"quality_focus must be [lo, hi, probability] beside a quality_range, not {f}")
        if task.mosaic:
            need(self.pattern in BAYER_PATTERNS + ("random",),
                 f"unknown Bayer pattern {self.pattern!r}; use {', '.join(BAYER_PATTERNS)} or random")
        return self


# --------------------------------------------------------------------------- reading

_FIELDS = {f.name for f in fields(TrainConfig)}


def read_recipe(path, _seen: Sequence[Path] = ()) -> Dict[str, Any]:
    """A recipe's settings, with its `extends` chain merged in (base first)."""
    path = Path(path)
    if not path.is_file():
        raise MagnError(f"{path}: recipe not found")
    if path.resolve() in _seen:
        raise MagnError(f"{path}: recipes extend each other in a loop")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise MagnError(f"{path}: not valid TOML ({e})") from None
    base = raw.pop("extends", None)
    if "stage" in raw:
        raise MagnError(f"{path}: a lineage recipe (its [[stage]] tables: how a checkpoint was made); "
                        f"replay it with magn train --recipe {path.stem} --out RUN")
    unknown = set(raw) - _FIELDS
    if unknown:
        raise MagnError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}")
    if base is None:
        return raw
    return merge(read_recipe(path.parent / base, (*_seen, path.resolve())), raw)


def merge(base: Dict[str, Any], overrides: Dict[str, Any]) -> Dict[str, Any]:
    """base updated by overrides; a key replaces its EXCLUSIVE partner; [model] merges."""
    out = dict(base)
    for key, value in overrides.items():
        # "No validation" ("" or 0, as config.toml writes them) replaces nothing.
        unset = value is None or (key in ("val", "val_holdout") and not value)
        if key in EXCLUSIVE and not unset:
            out.pop(EXCLUSIVE[key], None)
        if key == "model" and isinstance(value, dict) and isinstance(out.get("model", {}), dict):
            value = {**out.get("model", {}), **value}     # (not a table: config_from_dict says so)
        out[key] = value
    return out


def load_config(recipes: Sequence = (), overrides: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """TrainConfig from recipe files merged in order, then `overrides` (None values ignored)."""
    settings: Dict[str, Any] = {}
    for recipe in recipes:
        settings = merge(settings, read_recipe(recipe))
    settings = merge(settings, {k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(settings)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# What each field's annotation accepts, with the words of the error: a recipe's `lr =
# "1e-4"` or `channels = "1"` must be refused as such, not fail deep in the run (a
# TypeError) or be echoed as if it were right ("must be 1 or 3, not 1").
_KINDS = {
    "str": (lambda v: isinstance(v, str), "text"),
    "int": (_is_int, "an integer"),
    "float": (lambda v: _is_number(v) and math.isfinite(v), "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "List[int]": (lambda v: isinstance(v, list) and all(map(_is_int, v)), "a list of integers"),
    "List[float]": (lambda v: isinstance(v, list) and all(_is_number(x) and math.isfinite(x) for x in v),
                    "a list of finite numbers"),
    "Dict[str, Any]": (lambda v: isinstance(v, dict), "a table"),
}
_ANNOTATIONS = {f.name: f.type for f in fields(TrainConfig)}


def _check_types(settings: Dict[str, Any]) -> None:
    for key, value in settings.items():
        kind = _ANNOTATIONS[key]
        optional = kind.startswith("Optional[")
        if optional:
            kind = kind[len("Optional["):-1]
        if value is None and optional:
            continue
        ok, words = _KINDS[kind]
        if not ok(value):
            raise MagnError(f"training setting {key} must be {words}{' (or absent)' if optional else ''}, "
                            f"not {value!r}")


def config_from_dict(settings: Dict[str, Any]) -> TrainConfig:
    unknown = set(settings) - _FIELDS
    if unknown:
        raise MagnError(f"unknown training setting(s) {', '.join(sorted(unknown))}")
    _check_types(settings)
    try:
        config = TrainConfig(**settings)
    except TypeError as e:
        raise MagnError(f"bad training settings ({e})") from None
    return config.check()


# --------------------------------------------------------------------------- writing

def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def config_to_toml(config: TrainConfig, header: str = "") -> str:
    """The config as TOML that read_recipe reads back (None values are left out)."""
    settings = asdict(config)
    model = settings.pop("model")
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{k} = {_toml_value(v)}" for k, v in settings.items() if v is not None]
    if model:
        lines += ["", "[model]"] + [f"{k} = {_toml_value(v)}" for k, v in model.items()]
    return "\n".join(lines) + "\n"
