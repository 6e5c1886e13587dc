"""Training data: random patches of clean images, degraded on the fly.

    images = scan_images(resolve_data_folder("Train400"))   # readable files; bad ones counted
    dataset = PatchDataset(images.paths, config)             # index -> (degraded, clean)
    loader = make_loader(dataset, config, start_step=0)      # yields (B, C, p, p) pairs

Determinism: sample i of a run is drawn by its own generator, np.random.default_rng((seed, i)),
and the batch of step s holds samples s*batch ... s*batch + batch - 1 (in DDP, rank r takes
its slice of them). So the data depends only on (seed, step), not on the number of worker
processes or ranks, and a resumed run sees exactly the batches an uninterrupted one would:
the data position is the step.

Per sample: pick an image uniformly, reflect-pad it if it is smaller than the patch, take a
random patch, apply one of the 8 flips/rotations, convert the channels, then degrade it as
magn eval does (degrade.py): Gaussian noise in float, unclipped; JPEG of the 8-bit patch;
a zero-filled Bayer mosaic. With `hard_patches = k` (demosaicing) the sample is the worst
of k such draws for OpenCV bilinear demosaicing.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from magncli.datasets import list_images, resolve_data_root
from magncli.degrade import BAYER_PATTERNS, DEFAULT_PATTERN, DEFAULT_SEED
from magncli.errors import MagnError
from magncli.eval_methods import BASELINES
from magncli.images import read_image, to_float
from magncli.metrics import LUMA_BT601, rgb_to_y_studio
from magncli.tasks import Degradation, get_task
from magncli.training.config import TrainConfig

# --------------------------------------------------------------------------- files

def resolve_data_folder(name: str) -> Path:
    """A folder path, else a folder of that name under the data root ($MAGN_DATA, ...)."""
    if not name:
        raise MagnError("no training data: pass data=DIR (or set data in the recipe)")
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if not path.is_absolute():
        try:
            under_root = resolve_data_root() / name
        except MagnError:
            under_root = None
        if under_root is not None and under_root.is_dir():
            return under_root
    raise MagnError(f"training data folder {name} does not exist")


@dataclass
class ImageFiles:
    """The readable images of a folder, and the files skipped with the reason."""

    folder: Path
    paths: List[Path]
    skipped: List[Tuple[Path, str]] = field(default_factory=list)

    def split_holdout(self, count: int) -> Tuple["ImageFiles", List[Path]]:
        """(training images, `count` held-out validation images). The held-out set is the
        images whose names hash lowest (sha256 of the file name), so it depends on the
        names alone, not on the seed or the order of files (an image added later joins it
        only if its name hashes lower)."""
        if count <= 0:
            return self, []
        if count >= len(self.paths):
            raise MagnError(f"cannot hold out {count} of the {len(self.paths)} training images "
                            "for validation")
        ranked = sorted(self.paths, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())
        held = set(ranked[:count])
        kept = [p for p in self.paths if p not in held]
        return ImageFiles(self.folder, kept, self.skipped), sorted(held)

    def describe(self) -> dict:
        """The data as provenance records it: set name, image count and a content hash
        (sha256 over the sorted names and bytes), never a path of this machine."""
        digest = hashlib.sha256()
        for path in sorted(self.paths, key=lambda p: p.name):
            digest.update(path.name.encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return {"set": self.folder.name, "images": len(self.paths), "sha256": digest.hexdigest()}


def scan_images(folder) -> ImageFiles:
    """Decode every image file of `folder` once (not recursive), so that unreadable ones
    are skipped (and reported by the caller) up front instead of failing mid-run."""
    folder = Path(folder)
    candidates = list_images(folder)
    found = ImageFiles(folder, [])
    for path in candidates:
        try:
            read_image(path)
            found.paths.append(path)
        except MagnError as e:
            found.skipped.append((path, str(e)))
    if not found.paths:
        raise MagnError(f"none of the {len(candidates)} image files in {folder} could be read "
                        f"(first: {found.skipped[0][1]})")
    return found


# --------------------------------------------------------------------------- one sample

def random_patch(pixels: np.ndarray, patch: int, rng: np.random.Generator) -> np.ndarray:
    """A (patch, patch, C) crop of (H, W, C) pixels at a random place. Images smaller than
    the patch are reflect-padded first (not upscaled: resampling would blur the clean
    target and change its noise-free statistics)."""
    h, w = pixels.shape[:2]
    if h < patch or w < patch:
        pad = ((0, max(0, patch - h)), (0, max(0, patch - w)), (0, 0))
        pixels = np.pad(pixels, pad, mode="reflect")  # numpy reflects repeatedly if needed
        h, w = pixels.shape[:2]
    top = int(rng.integers(h - patch + 1))
    left = int(rng.integers(w - patch + 1))
    return pixels[top:top + patch, left:left + patch]


def random_downscaled_patch(pixels: np.ndarray, patch: int, scale: float,
                            rng: np.random.Generator) -> np.ndarray:
    """A (patch, patch, C) float32 crop of (H, W, C) pixels seen at `scale` (<= 1): a
    square of patch/scale pixels at a random place, shrunk by area averaging (what the
    image would show photographed from farther away: finer detail, less blur and JPEG)."""
    crop = to_float(np.ascontiguousarray(random_patch(pixels, round(patch / scale), rng)))  # (s, s, C)
    shrunk = cv2.resize(crop, (patch, patch), interpolation=cv2.INTER_AREA)
    return shrunk.reshape(patch, patch, crop.shape[2])                        # cv2 drops C = 1


def random_dihedral(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of the 8 flips/rotations of (H, W, C), uniformly (the inference x8 ensemble's set)."""
    k = int(rng.integers(8))
    x = np.rot90(x, k % 4)
    return x[:, ::-1] if k >= 4 else x


def convert_channels(x: np.ndarray, channels: int, task: str) -> np.ndarray:
    """float32 (H, W, C) -> (H, W, channels). Color to gray is BT.601: studio Y for JPEG
    (how the gray JPEG sets such as LIVE1 are made), full-range luma 0.299R + 0.587G +
    0.114B otherwise (MATLAB rgb2gray, how BSD68 and Urban100_gray are made). A gray image
    in a color run is repeated over the three channels."""
    if x.shape[2] == channels:
        return x
    if channels == 3:
        return np.repeat(x, 3, axis=2)
    if get_task(task).gray_is_studio_y:
        return rgb_to_y_studio(x).astype(np.float32)[..., None]
    return cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY)[..., None]


def scale_saturation(x: np.ndarray, factor: float) -> np.ndarray:
    """(H, W, 3) float RGB with its chroma (RGB minus BT.601 luma) scaled by factor, in [0, 1]."""
    luma = x @ np.array(LUMA_BT601, dtype=np.float32)                          # (H, W)
    return np.clip(luma[..., None] + factor * (x - luma[..., None]), 0.0, 1.0).astype(np.float32)


def add_grain(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W, C) float image plus Gaussian grain of `sigma` (8-bit units), independent in
    every channel and pixel, clipped to [0, 1]."""
    grain = rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma / 255.0)
    return np.clip(x + grain, 0.0, 1.0)


def _span(whole: Sequence[float], focus: Optional[Sequence[float]], rng: np.random.Generator):
    """The [lo, hi] to draw a level from: a recipe's focus [lo, hi, p] with probability p,
    else the whole range. The coin is drawn only when a focus is set, so runs without one
    keep their exact data stream."""
    if focus is not None and rng.random() < focus[2]:
        return focus[:2]
    return whole


class PatchDegradation:
    """The task's random degradation of one clean float32 (H, W, C) patch. What is drawn,
    in this order, from the sample's generator: the level as the recipe sets it, the noise
    seed of a random task, the pattern of a Bayer task (so the data stream of a run
    depends on its recipe alone)."""

    def __init__(self, config: TrainConfig):
        self.task = get_task(config.task)
        self.sigma, self.sigma_range = config.sigma, config.sigma_range
        self.qualities, self.quality_range = config.qualities, config.quality_range
        self.quality_focus, self.sigma_focus = config.quality_focus, config.sigma_focus
        self.patterns = BAYER_PATTERNS if config.pattern == "random" else (config.pattern,)

    def _level(self, rng: np.random.Generator):
        """This sample's level from the recipe's settings of it (see TrainConfig.levels)."""
        if self.task.level_key == "sigma":
            if self.sigma is not None:
                return self.sigma
            return rng.uniform(*_span(self.sigma_range, self.sigma_focus, rng))
        if self.task.level_key == "quality":
            if self.qualities:
                return self.qualities[int(rng.integers(len(self.qualities)))]
            lo, hi = _span(self.quality_range, self.quality_focus, rng)
            return int(rng.integers(int(lo), int(hi) + 1))
        return None

    def __call__(self, clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw this sample's degradation, then apply it as the eval protocol does."""
        return self.draw(rng).apply(clean)

    def draw(self, rng: np.random.Generator) -> Degradation:
        """This sample's degradation."""
        level = self._level(rng)
        # The eval noise stream, seeded from this sample's generator.
        seed = int(rng.integers(2 ** 32)) if self.task.seeded else DEFAULT_SEED
        # Every pattern is GRBG seen from an origin shifted by one pixel (down, right or
        # both), so random patterns teach one model all four phases.
        pattern = self.patterns[int(rng.integers(len(self.patterns)))] if self.task.mosaic else DEFAULT_PATTERN
        return self.task.degradation(level, seed, pattern)


class PatchDataset(Dataset):
    """Sample index -> (degraded, clean), each a float32 tensor (C, patch, patch) (the
    degraded one (C + 1, patch, patch) with the level map of a level-conditioned model).

    The index is the sample's position in the whole run (step * batch + i), and the only
    source of randomness is np.random.default_rng((seed, index)). The images are decoded
    once and held in memory as stored (uint8 for the training sets: Train400 is 13 MB,
    CBSD432 about 200 MB); decoding a PNG per sample cost more than the crop itself."""

    def __init__(self, paths: List[Path], config: TrainConfig):
        self.paths = list(paths)
        self.pixels = [read_image(path).pixels for path in self.paths]        # (H, W, C) each
        self.nbytes = sum(p.nbytes for p in self.pixels)     # held once per loader process
        self.patch, self.channels, self.task = config.patch, config.channels, config.task
        self.seed = config.seed
        self.saturation_range, self.saturation_share = config.saturation_range, config.saturation_share
        self.grain_range = config.grain_range
        self.scale_range = config.scale_range
        self.degrade = PatchDegradation(config)
        # A level-conditioned model also gets the level map; a share of the samples read
        # "unknown", as a file that does not state its quality does.
        self.level_input = config.level_input()
        self.level_unknown = config.level_unknown
        # Hard-patch mining (Gharbi et al. 2016, "Deep joint demosaicking and denoising"):
        # keep the hardest of `hard_patches` random patches for bilinear demosaicing.
        self.hard_patches = config.hard_patches

    def __len__(self) -> int:  # nominal: samples are drawn with replacement, indices are open-ended
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, int(index)))
        # More than one candidate only with hard_patches, so other runs keep their data stream;
        # ranked only then (a bilinear demosaic each).
        candidates = [self._candidate(rng) for _ in range(self.hard_patches)]
        clean, degradation, degraded = (candidates[0] if len(candidates) == 1 else
                                        max(candidates, key=lambda c: self._hardness(*c)))
        if self.level_input:  # drawn only then, so other runs keep their exact data stream
            level = None if rng.random() < self.level_unknown else degradation.level
            degraded = get_task(self.task).with_level_plane(degraded, level)   # (p, p, C + 1)
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))  # noqa: E731
        return as_tensor(degraded), as_tensor(clean)

    def _candidate(self, rng: np.random.Generator) -> Tuple[np.ndarray, Degradation, np.ndarray]:
        """One random patch: (clean (p, p, C), its degradation, degraded (p, p, C)), float32."""
        pixels = self.pixels[int(rng.integers(len(self.paths)))]               # (H, W, C) as stored
        if self.scale_range is not None:                # drawn only when on
            scale = float(rng.uniform(*self.scale_range))
            crop = random_downscaled_patch(pixels, self.patch, scale, rng)     # (p, p, C) float
        else:
            crop = random_patch(pixels, self.patch, rng)                       # (p, p, C) as stored
        crop = random_dihedral(crop, rng)
        clean = convert_channels(to_float(np.ascontiguousarray(crop)), self.channels, self.task)
        if self.saturation_range is not None and clean.shape[2] == 3:  # drawn only when on
            factor = float(rng.uniform(*self.saturation_range))
            # The share's coin only when set, so runs without it keep their data stream.
            if self.saturation_share == 1.0 or rng.random() < self.saturation_share:
                clean = scale_saturation(clean, factor)
        if self.grain_range is not None:                # drawn only when on
            clean = add_grain(clean, float(rng.uniform(*self.grain_range)), rng)
        degradation = self.degrade.draw(rng)
        return clean, degradation, degradation.apply(clean)

    @staticmethod
    def _hardness(clean: np.ndarray, degradation: Degradation, degraded: np.ndarray) -> float:
        """How wrong OpenCV bilinear demosaicing is on a patch (MSE): what hard-patch mining
        ranks candidates by."""
        naive = BASELINES["opencv-bilinear"].restore(degraded, degradation)    # (p, p, 3)
        return float(np.mean((naive - clean) ** 2))


# --------------------------------------------------------------------------- batches

class StepBatches(Sampler):
    """Sample indices of the batches of steps [start, stop) on one rank.

    Step s covers the global samples s*batch ... s*batch + batch - 1; rank r of `world`
    takes the r-th of `world` equal slices, so DDP ranks see disjoint data."""

    def __init__(self, start: int, stop: int, batch: int, rank: int = 0, world: int = 1):
        if batch % world:
            raise MagnError(f"batch {batch} does not split evenly over {world} processes")
        self.start, self.stop, self.batch = start, stop, batch
        self.per_rank = batch // world
        self.offset = rank * self.per_rank

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[List[int]]:
        for step in range(self.start, self.stop):
            first = step * self.batch + self.offset
            yield list(range(first, first + self.per_rank))


def _seed_worker(worker_id: int) -> None:
    """Per-worker seeding: torch gives each worker base_seed + id; numpy and random follow
    it. Samples do not use these generators (they carry their own), but nothing drawn in a
    worker is then left to chance. One torch thread per worker: the workers are the
    parallelism. (Not cv2.setNumThreads: in a forked child of a process whose OpenCV
    thread pool has run, it deadlocks; OpenCV calls themselves work.)"""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


def make_loader(dataset: PatchDataset, config: TrainConfig, start_step: int, stop_step: int,
                rank: int = 0, world: int = 1, pin_memory: bool = False) -> DataLoader:
    """Batches (degraded, clean), each (batch/world, C, p, p), of steps start_step ... stop_step-1."""
    # An explicit generator: the loader then never draws from torch's global generator.
    generator = torch.Generator().manual_seed(config.seed * 100_003 + rank)
    return DataLoader(dataset, batch_sampler=StepBatches(start_step, stop_step, config.batch, rank, world),
                      num_workers=config.workers, worker_init_fn=_seed_worker, generator=generator,
                      pin_memory=pin_memory, persistent_workers=False)
