"""Benchmark test sets: where the sets live, which task and channels each serves, and how
their images are listed and loaded (a gray track of an RGB set as its studio Y).

The data root is, first found: the `data_root` argument (`--data-root`), $MAGN_DATA, or
../shared/datasets next to the repository checkout. Set names are the folder names of
shared/datasets (see SOURCES.md there); any other folder of images can be evaluated too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

from magncli.errors import MagnError
from magncli.images import IMAGE_EXTENSIONS, read_image, to_float
from magncli.metrics import rgb_to_y_studio_uint8

CHANNELS = ("gray", "color")

_REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TestSet:
    """A named benchmark set. `tracks` maps a task to the channel modes it is scored in;
    `stored` is what the files hold. A "gray" track of an RGB set scores its studio Y."""

    __test__ = False  # not a pytest class, despite the name

    name: str
    stored: str  # "gray" or "color"
    tracks: Dict[str, Tuple[str, ...]]
    note: str = ""


# The table of docs/protocols.md.
TEST_SETS: Dict[str, TestSet] = {s.name: s for s in (
    TestSet("Set12", "gray", {"denoise": ("gray",)}),
    TestSet("BSD68", "gray", {"denoise": ("gray",)}),
    TestSet("Urban100_gray", "gray", {"denoise": ("gray",)}),
    TestSet("CBSD68", "color", {"denoise": ("color",)}),
    TestSet("Kodak24", "color", {"denoise": ("color",), "dejpeg": ("color",),
                                 "demosaic": ("color",)}),
    TestSet("McMaster", "color", {"denoise": ("color",), "demosaic": ("color",)}),
    TestSet("Urban100_color_subset", "color", {"denoise": ("color",), "demosaic": ("color",)},
            note="10 of the 100 images: not comparable with published Urban100 numbers"),
    TestSet("Classic5", "gray", {"dejpeg": ("gray",)}),
    # LIVE1's gray track scores the BT.601 studio Y of its RGB files (see load_ground_truth).
    TestSet("LIVE1", "color", {"dejpeg": ("gray", "color")}),
)}


# --------------------------------------------------------------------------- data root

def resolve_data_root(data_root: Union[str, Path, None] = None) -> Path:
    """data_root > $MAGN_DATA > ../shared/datasets beside the checkout, else MagnError."""
    if data_root is not None:
        root, origin = Path(data_root), "data_root="
    elif os.environ.get("MAGN_DATA"):
        root, origin = Path(os.environ["MAGN_DATA"]), "$MAGN_DATA"
    else:
        root = _REPO_ROOT.parent / "shared" / "datasets"
        if not root.is_dir():
            raise MagnError("no benchmark data root: pass data_root=DIR or set MAGN_DATA")
        return root
    if not root.is_dir():
        raise MagnError(f"data root {root} (from {origin}) is not a folder")
    return root


def find_test_set(name: str) -> Optional[TestSet]:
    """The named set, matched case-insensitively, or None."""
    for known in TEST_SETS.values():
        if known.name.lower() == name.lower():
            return known
    return None


def resolve_set(name_or_folder: str, data_root: Union[str, Path, None] = None
                ) -> Tuple[str, Path, Optional[TestSet]]:
    """A set name or a folder -> (display name, folder, TestSet or None for a plain folder)."""
    known = find_test_set(name_or_folder)
    if known is not None:
        folder = resolve_data_root(data_root) / known.name
        if not folder.is_dir():
            raise MagnError(f"test set {known.name} not found at {folder}")
        return known.name, folder, known
    folder = Path(name_or_folder)
    if folder.is_dir():
        return folder.name, folder, None
    raise MagnError(f"unknown test set {name_or_folder!r} (not a folder either); "
                    f"known sets: {', '.join(TEST_SETS)}")


def sets_for(task: str, channels: Optional[str] = None) -> List[str]:
    """Names of the sets that serve `task` (in `channels` mode, when given)."""
    return [s.name for s in TEST_SETS.values()
            if task in s.tracks and (channels is None or channels in s.tracks[task])]


# --------------------------------------------------------------------------- images

def list_images(folder: Union[str, Path]) -> List[Path]:
    """The image files of a folder (not recursive), sorted by name; MagnError if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MagnError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise MagnError(f"no image files in {folder} (looked for {' '.join(IMAGE_EXTENSIONS)})")
    return files


def read_raw(path: Union[str, Path]) -> np.ndarray:
    """The file's samples as stored: uint8, uint16 or float32, HxWxC with C = 1 or 3 (RGB),
    through the one image reader (magncli.images); alpha is not scored and is dropped."""
    return read_image(path).pixels


def load_image(path: Union[str, Path]) -> np.ndarray:
    """float32 HxWxC (C = 1 or 3) on [0, 1]."""
    return to_float(read_raw(path))


def load_ground_truth(path: Union[str, Path], channels: str) -> np.ndarray:
    """A clean image in the requested channel mode, float32 HxWx1 (gray) or HxWx3 (color).
    An RGB file on a gray track becomes its 8-bit studio Y (the LIVE1 gray protocol)."""
    pixels = read_raw(path)
    if channels == "gray" and pixels.shape[2] == 3:
        if pixels.dtype != np.uint8:
            raise MagnError(f"{path}: the gray (Y) track needs 8-bit RGB files")
        pixels = rgb_to_y_studio_uint8(pixels)[..., None]
    elif channels == "color" and pixels.shape[2] == 1:
        raise MagnError(f"{path} is a gray image but the color channels were asked for")
    return to_float(pixels)
