"""The restoration tasks: one Task per task, registered by name as architectures are.

    task = get_task("dejpeg")
    degradation = task.degradation(20)            # Degradation(task=<task dejpeg>, level=20)
    degraded = degradation.apply(clean)           # float32 (H, W, C) -> degraded (H, W, C)
    restored = restore_for_task(model, degraded, task, options=options)

A Task holds everything that differs between tasks: the name of its one level (sigma,
quality, or none) and its default levels, how a level is checked, how an image is
degraded, how a model sees the degraded image (a Bayer mosaic is shifted into the GRBG
phase the models take, its tiles keep the Bayer period, each flip of the x8 ensemble is
padded back into that phase, and the output is cropped back), whether an image file
states its level, and how results are scored.
`restore_for_task` is the one way `magn restore`, `magn eval` and training validation
run a model on an image.

Adding a task is one `register_task(Task(...))` below. What it is benchmarked on is
data (datasets.TEST_SETS); a task that trains also needs its level settings in the
training recipes (training/config.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from magncli.degrade import (AUTO_PATTERN, DEFAULT_PATTERN, DEFAULT_SEED, DEFAULT_SUBSAMPLING, add_gaussian_noise,
                             align_mosaic, bayer_masks, bayer_mosaic, cfa_to_mosaic, check_pattern, check_quality,
                             check_seed, check_sigma, check_subsampling, detect_pattern, jpeg_compress, jpeg_encode,
                             pattern_shift)
from magncli.errors import MagnError
from magncli.images import Image
from magncli.jpeg_quality import NO_CHROMA, estimate_jpeg_quality, jpeg_subsampling
from magncli.level_maps import quality_plane, sigma_plane

if TYPE_CHECKING:                   # the engine (torch) loads when a model runs, not with the tasks
    from torch import Tensor, nn

    from magncli.inference import InferenceOptions, ProgressCallback

# The Bayer period: tiles of a mosaic start on even rows and columns, in the same phase.
BAYER_PERIOD = 2


@dataclass(frozen=True)
class Degradation:
    """One task's degradation with its parameters; `as_dict()` is what results and
    manifests record, e.g. {"task": "denoise", "sigma": 25, "seed": 0}."""

    task: Task                       # its task (results record its name)
    level: Optional[float] = None    # the task's level (sigma on the 0-255 scale, JPEG quality); None: no level
    pattern: Optional[str] = None    # Bayer tasks: the pattern of the mosaic
    seed: Optional[int] = None       # random tasks: the RandomState seed of every image
    subsampling: Optional[str] = None  # JPEG tasks: the chroma subsampling of color images ("4:2:0")

    @property
    def label(self) -> str:
        """The task's parameter as a short table label: "σ25", "q10" or "grbg"."""
        task = self.task
        label = f"{task.level_label}{self.level:g}" if task.level_key else self.pattern
        # Another subsampling than the protocol's is another table row ("q90 4:4:4").
        if self.subsampling is not None and self.subsampling != DEFAULT_SUBSAMPLING:
            label += f" {self.subsampling}"
        return label

    def as_dict(self) -> dict:
        key = self.task.level_key                            # "sigma", "quality" or None
        record = {"task": self.task.name, **({key: self.level} if key else {}),
                  "pattern": self.pattern, "seed": self.seed, "subsampling": self.subsampling}
        return {k: v for k, v in record.items() if v is not None}

    def apply(self, img: np.ndarray) -> np.ndarray:
        """img float32 (H, W, C) in [0, 1] -> degraded float32 (H, W, C)."""
        return self.task.degrade(img, self)


def _no_level(level) -> float:
    raise AssertionError("unreachable: Task.check_level refuses levels for a task without one")


@dataclass(frozen=True)
class Task:
    """One restoration task: what differs from the others, in one place."""

    name: str
    degrade: Callable[[np.ndarray, Degradation], np.ndarray]   # float32 (H, W, C) -> degraded
    level_key: Optional[str] = None                     # the name of its level ("sigma"); None: none
    level_label: str = ""                               # the level's prefix in table labels ("σ")
    default_levels: Tuple[float, ...] = ()              # what eval and validation score when not told
    parse_level: Callable[[float], float] = _no_level   # MagnError for a bad level, else it as recorded
    seeded: bool = False                                # draws random numbers: records its seed
    subsampled: bool = False                            # JPEG: records the chroma subsampling of color
    mosaic: bool = False                                # inputs are Bayer mosaics of a pattern
    # The level an image file states, and where it was read ("JPEG tables"), or None.
    level_from_image: Optional[Callable[[Image], Optional[Tuple[float, str]]]] = None
    # What else a file states about its degradation, recorded beside the level: a
    # JPEG's chroma subsampling ({"subsampling": "4:4:4"}); {} for a file that says nothing.
    facts_from_image: Optional[Callable[[Image], dict]] = None
    # Why the published default models would not improve a file of this level and these
    # facts (restore then returns the input unchanged, unless forced), or None.
    unimprovable: Optional[Callable[[float, dict], Optional[str]]] = None
    # The degraded image as the JPEG file itself, for a task whose degradation is one.
    jpeg_file: Optional[Callable[[np.ndarray, Degradation], bytes]] = None
    # The level as a level-conditioned model sees it (one constant input plane), from the
    # level or None for "not known" (blind); None: this task has no level map.
    level_plane: Optional[Callable[[Optional[float]], float]] = None
    scored_on_y: bool = False                           # color results also scored on studio Y
    gray_is_studio_y: bool = False                      # its gray images are studio Y, not luma

    def __repr__(self) -> str:                          # its name says which; the rest is code
        return f"<task {self.name}>"

    def __reduce__(self):
        # Pickled (a Degradation sent to another process) as its name: a task is code,
        # registered once per process, and its lambdas do not pickle.
        return get_task, (self.name,)

    # ------------------------------------------------------------------ levels
    def check_level(self, level) -> float:
        """The level as results record it (25.0 -> 25); MagnError for a bad one or for a
        task that has none."""
        if self.level_key is None:
            raise MagnError(f"{self.name} has no level" + (" (choose the Bayer pattern instead)"
                                                           if self.mosaic else ""))
        return self.parse_level(level)

    def degradation(self, level=None, seed: int = DEFAULT_SEED, pattern: str = DEFAULT_PATTERN,
                    subsampling: str = DEFAULT_SUBSAMPLING) -> Degradation:
        """Validate and build one Degradation: `level` for a task with one (else None);
        `seed` kept by random tasks, `pattern` by Bayer ones, `subsampling` by JPEG ones."""
        if level is None and self.level_key is not None:
            raise MagnError(f"task {self.name} needs a level ({self.level_key}=)")
        return Degradation(self, None if level is None else self.check_level(level),
                           pattern=check_pattern(pattern) if self.mosaic else None,
                           seed=check_seed(seed) if self.seeded else None,
                           subsampling=check_subsampling(subsampling) if self.subsampled else None)

    def degradations(self, levels: Sequence = (), seed: int = DEFAULT_SEED,
                     pattern: str = DEFAULT_PATTERN, subsampling: str = DEFAULT_SUBSAMPLING) -> List[Degradation]:
        """One Degradation per level, the default levels when none are given; a task
        without levels has one."""
        if self.level_key is None:
            return [self.degradation(levels[0] if levels else None, seed, pattern, subsampling)]
        return [self.degradation(level, seed, pattern, subsampling) for level in (levels or self.default_levels)]

    # ------------------------------------------------------------------ the model's view
    def model_channels(self, image_channels: int) -> int:
        """Channels of the model that restores an image of `image_channels` (a 1-channel
        CFA is restored by a 3-channel demosaicing model)."""
        return 3 if self.mosaic else image_channels

    @property
    def period(self) -> int:
        """The input's period that tile origins keep (2 for a Bayer mosaic)."""
        return BAYER_PERIOD if self.mosaic else 1

    @property
    def model_pattern(self) -> Optional[str]:
        """The Bayer pattern of the mosaics this task's models take (None: not a mosaic)."""
        return DEFAULT_PATTERN if self.mosaic else None

    def input_pattern(self, image: np.ndarray, pattern: Optional[str] = AUTO_PATTERN) -> Optional[str]:
        """The Bayer pattern of a mosaic input: `pattern` as given, or read off the
        image when "auto" or None (MagnError when it cannot be told); None for a task
        whose inputs are not mosaics."""
        if not self.mosaic:
            return None
        if pattern is None or pattern == AUTO_PATTERN:
            return detect_pattern(image)
        return check_pattern(pattern)

    def prepare_input(self, image: np.ndarray, pattern: Optional[str] = AUTO_PATTERN
                      ) -> Tuple[np.ndarray, Tuple[int, int]]:
        """What this task's models take, and the (dy, dx) to crop off their output: a
        Bayer mosaic of `pattern` (3 channels zero-filled, or a one-channel CFA; "auto"
        or None: read off the image) becomes the GRBG mosaic the models were trained
        on, padded by dy rows on top and dx columns on the left; anything else is taken
        as it is."""
        if not self.mosaic:
            return image, (0, 0)
        pattern = self.input_pattern(image, pattern)
        if image.ndim == 2 or image.shape[2] == 1:                            # a CFA, (H, W[, 1])
            image = cfa_to_mosaic(image, pattern)                               # (H, W, 3)
        return align_mosaic(image, pattern, self.model_pattern)                # (H + dy, W + dx, 3)

    def with_level_plane(self, image: np.ndarray, level: Optional[float]) -> np.ndarray:
        """(H, W, C) -> (H, W, C + 1): the image and its level map, what a model with
        `level_input` takes; level None (a file that does not state it) is "unknown"."""
        if self.level_plane is None:
            raise MagnError(f"{self.name} has no level map for a level-conditioned model")
        plane = np.full(image.shape[:2] + (1,), self.level_plane(level), np.float32)
        return np.concatenate([image, plane], axis=2)

    @staticmethod
    def finish_output(restored: np.ndarray, shift: Tuple[int, int]) -> np.ndarray:
        """The model's output cropped back to the image: (H + dy, W + dx, C) -> (H, W, C)."""
        dy, dx = shift
        return restored[dy:, dx:]

    def ensemble_input(self, t: Tensor, k: int, size: Tuple[int, int]) -> Tuple[Tensor, Tuple[int, int]]:
        """For the x8 self-ensemble (magncli.ensemble): t (B, C, H', W'), the k-th flip or
        rotation (ensemble.dihedral) of an input of `size` (H, W), as this task's models
        take it, and the (dy, dx) rows and columns to crop off the top and left of their
        output. A flipped or rotated Bayer mosaic is a mosaic of another pattern, which a
        model trained on one cannot read: it is padded back into the models' pattern by one
        reflected row on top and/or column on the left (a reflection keeps each pixel's
        colour site). Other tasks' inputs are taken as they are."""
        if not self.mosaic:
            return t, (0, 0)
        from torch.nn import functional as F
        dy, dx = pattern_shift(_dihedral_pattern(self.model_pattern, k, *size), self.model_pattern)
        if dy or dx:
            mode = "reflect" if min(t.shape[-2:]) > 1 else "replicate"
            t = F.pad(t, (dx, 0, dy, 0), mode=mode)                            # (B, C, H' + dy, W' + dx)
        return t, (dy, dx)


def _dihedral_pattern(pattern: str, k: int, height: int, width: int) -> str:
    """The Bayer pattern of the k-th flip or rotation (ensemble.dihedral) of a (height,
    width) `pattern` mosaic: the transform moves the colour sites, by the size's parity."""
    import torch

    from magncli.ensemble import dihedral
    # A mosaic of the same size parity has the same pattern after the transform.
    sites = bayer_masks(2 + height % 2, 2 + width % 2, pattern).argmax(axis=2)  # (2|3, 2|3): 0 R, 1 G, 2 B
    corner = dihedral(torch.from_numpy(sites)[None, None], k)[0, 0, :2, :2].flatten()
    return "".join("rgb"[int(i)] for i in corner)


TASKS: Dict[str, Task] = {}


def register_task(task: Task) -> Task:
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} registered twice")
    TASKS[task.name] = task
    return task


def get_task(task) -> Task:
    """The Task of a name (a Task is returned as it is); MagnError naming the known tasks."""
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise MagnError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    return TASKS[task]


def make_degradation(task, level=None, seed: int = DEFAULT_SEED, pattern: str = DEFAULT_PATTERN,
                     subsampling: str = DEFAULT_SUBSAMPLING) -> Degradation:
    """Validate and build a Degradation of `task` (see Task.degradation)."""
    return get_task(task).degradation(level, seed, pattern, subsampling)


def degrade(img: np.ndarray, task, level=None, seed: int = DEFAULT_SEED,
            pattern: str = DEFAULT_PATTERN, subsampling: str = DEFAULT_SUBSAMPLING) -> np.ndarray:
    """One call for one image: float32 (H, W, C) [0, 1] -> degraded float32 (H, W, C)."""
    return make_degradation(task, level, seed, pattern, subsampling).apply(img)


def restore_for_task(model: nn.Module, image: np.ndarray, task, *, pattern: Optional[str] = AUTO_PATTERN,
                     level: Optional[float] = None, options: Optional[InferenceOptions] = None,
                     progress: Optional[ProgressCallback] = None) -> np.ndarray:
    """Restore one degraded float32 (H, W, C) image of `task` (a Task, or its name) with
    `model`: the one way restore, eval and training validation run a model. The task adapts
    the input to what its models take and the output back (a Bayer mosaic of `pattern`,
    read off the mosaic when "auto" or None, is restored in GRBG phase, every tile and
    every flip of the ensemble on the same phase; a gray image given only a color model
    goes through it replicated, and the mean of its channels is kept; a model with
    `level_input` also gets the map of `level`, None meaning not known). Returns float32
    (H, W, C'), unclipped."""
    from magncli.inference import plan_tiles, restore_planned    # the engine (torch): when a model runs
    task = get_task(task)
    # The model's facts and the options, settled once for the whole image.
    plan = plan_tiles(model, options, period=task.period, ensemble_input=task.ensemble_input)
    stated = plan.facts
    if stated.level_input and task.level_plane is None:       # refused before any work on the image
        raise MagnError(f"{task.name} has no level map for a level-conditioned model")
    x, shift = task.prepare_input(image, pattern)                              # (H', W', C')
    gray_through_color = stated.in_channels == 3 and x.shape[2] == 1
    if gray_through_color:
        x = np.repeat(x, 3, axis=2)                                            # (H', W', 3)
    if stated.level_input:
        if level is None and stated.level_required:
            raise MagnError(f"{getattr(model, 'arch', 'this model')} needs the {task.level_key}: "
                            f"it has no blind use (give {task.level_key}=)")
        x = task.with_level_plane(x, level)                                    # (H', W', C' + 1)
    restored = restore_planned(model, x, plan, progress)                       # (H', W', C')
    if gray_through_color:
        restored = restored.mean(axis=2, keepdims=True)                        # (H', W', 1)
    return task.finish_output(restored, shift)                                 # (H, W, C')


# --------------------------------------------------------------------------- the tasks

def _sigma(level) -> float:
    sigma = float(level)
    check_sigma(sigma)
    return int(sigma) if sigma.is_integer() else sigma


def _quality(level) -> int:
    check_quality(float(level))
    return int(level)


def _quality_from_tables(image: Image) -> Optional[Tuple[int, str]]:
    """A JPEG file says how it was compressed: the quality its tables were scaled to."""
    if not image.jpeg_quantization:
        return None
    quality, exact = estimate_jpeg_quality(image.jpeg_quantization)
    return quality, "JPEG tables" if exact else "JPEG tables (nearest IJG quality)"


def _subsampling_from_sof(image: Image) -> dict:
    """A JPEG file says how its chroma was sampled (its frame header's sampling factors)."""
    return {"subsampling": jpeg_subsampling(image.jpeg_sampling)} if image.jpeg_sampling else {}


# The JPEG files the published default models make worse: subsampling -> the lowest
# quality from which restore returns the input unchanged (unless forced; None: never).
# Measured on the images training holds out (24 of CBSD432 for the color model, 20 of
# Train400 for the gray one; never a test set), saved by Pillow, restored with restore's
# defaults (bf16, tile 128). CBSD432's files are q95 4:2:0 JPEGs themselves, so a color
# reference at q95+ would keep its own artifacts: the color cells are measured on the
# held-out images halved (area), which leaves no JPEG grid; Train400 is PNG.
#     python benchmarks/bench_jpeg_guard.py --only color --halve --qualities 70,80,83,85,88,90,92,93,95,98,100 \
#         --json benchmarks/results/jpeg-guard-color-halved.json
#     python benchmarks/bench_jpeg_guard.py --only gray --qualities 70,80,85,90,92,95,96,98,100 \
#         --json benchmarks/results/jpeg-guard-gray.json
# A measured quality fails when its mean gain is <= 0 or any image loses more than 0.05 dB;
# guarded: every quality above the last that passed before the first failure (a quality
# between the two was not measured, so it is kept on the safe side). Mean / worst gain, dB:
#   4:4:4  q83 +0.72/+0.08   q85 +0.64/-0.05   q88 +0.47/-0.39   q95 -0.77/-3.12   q100 -4.97/-10.80
#   4:2:2  q93 +0.57/+0.01   q95 +0.35/-0.29   q98 -0.01/-0.70   q100 -0.16/-0.88
#   4:2:0  q95 +0.77/+0.33   q98 +0.78/+0.18   q100 +0.95/+0.23  (every quality passes)
#   gray   q96 +0.44/+0.17   q98 +0.00/-0.10   q100 -0.17/-0.64
# New default models need this measured again.
JPEG_GUARD = {"4:4:4": 86, "4:2:2": 94, "4:2:0": None, NO_CHROMA: 97}


def _jpeg_guard(quality: float, facts: dict) -> Optional[str]:
    """Why the published models would not improve this JPEG (JPEG_GUARD), or None. A file
    that states no subsampling (not a JPEG) is never guarded; a color one of a subsampling
    not measured (4:4:0, 4:1:1, unusual factors) gets the strictest measured color row."""
    subsampling = facts.get("subsampling")
    if subsampling is None:
        return None
    if subsampling in JPEG_GUARD:
        lowest = JPEG_GUARD[subsampling]
    else:                                   # a color subsampling not measured: the strictest row
        lowest = min(q for name, q in JPEG_GUARD.items() if name != NO_CHROMA and q is not None)
    if lowest is None or quality < lowest:
        return None
    return f"q{quality:g} {subsampling}: the model does not improve such files"


register_task(Task(
    "denoise",                       # Gaussian noise
    degrade=lambda img, d: add_gaussian_noise(img, d.level, d.seed),
    level_key="sigma", level_label="σ", default_levels=(15, 25, 50), parse_level=_sigma,
    level_plane=sigma_plane, seeded=True))

register_task(Task(
    "dejpeg",                        # JPEG compression artifacts
    degrade=lambda img, d: jpeg_compress(img, d.level, d.subsampling).astype(np.float32) / 255.0,
    level_key="quality", level_label="q", default_levels=(10, 20, 30, 40), parse_level=_quality,
    level_from_image=_quality_from_tables, level_plane=quality_plane, subsampled=True,
    facts_from_image=_subsampling_from_sof, unimprovable=_jpeg_guard,
    jpeg_file=lambda img, d: jpeg_encode(img, d.level, d.subsampling),
    # The protocol scores color JPEG on RGB and on Y; its gray sets (LIVE1's gray track,
    # Classic5) are studio Y.
    scored_on_y=True, gray_is_studio_y=True))

register_task(Task(
    "demosaic",                      # the Bayer mosaic
    degrade=lambda img, d: bayer_mosaic(img, d.pattern),
    mosaic=True))
