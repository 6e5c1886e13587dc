"""16-bit and float image files, which Pillow would reduce to 8 bits: telling them
apart from a header, decoding them with OpenCV (RGB order, gray kept gray, alpha split
off), a TIFF's first IFD read by hand (for the TIFFs Pillow cannot open), and an EXIF
orientation applied to the decoded arrays.
"""
from __future__ import annotations

import struct
from typing import Optional

import cv2
import numpy as np
from PIL import Image as PILImage

from magncli.errors import MagnError

ORIENTATION_TAG = 0x0112
TIFF_MAGIC = (b"II*\x00", b"MM\x00*")


def is_high_depth(data: bytes, pil: PILImage.Image) -> bool:
    """True for 16-bit and float files, which Pillow would reduce to 8 bits."""
    if pil.format == "PNG" and len(data) > 24:
        return data[24] == 16                 # IHDR bit depth
    if pil.format == "TIFF":
        bits = pil.tag_v2.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return max(bits) > 8
    return pil.mode in ("I;16", "I;16B", "I;16L", "I", "F")


def declares_gray(data: bytes, pil: PILImage.Image) -> bool:
    """Whether the file says its samples are gray (OpenCV expands gray + alpha to BGRA)."""
    if pil.format == "PNG" and len(data) > 25:
        return data[25] in (0, 4)             # IHDR colour type: gray, gray + alpha
    if pil.format == "TIFF":
        return pil.tag_v2.get(262) in (0, 1)  # photometric: WhiteIsZero, BlackIsZero
    return False


def tiff_first_ifd(data: bytes):
    """(width, height, orientation, more pages, bits per sample, sample format) from a
    TIFF's first IFD (of a per-channel tag, the first channel's)."""
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, offset)
    tags = {}
    for i in range(count):
        tag, kind, n, value = struct.unpack_from(order + "HHI4s", data, offset + 2 + 12 * i)
        # width, height (SHORT or LONG), orientation, bits per sample, sample format
        if tag in (256, 257, 274, 258, 339) and kind in (3, 4):
            fmt = "H" if kind == 3 else "I"
            inline = n * struct.calcsize(fmt) <= 4
            where = value if inline else data[struct.unpack_from(order + "I", value)[0]:]
            tags[tag] = struct.unpack_from(order + fmt, where)[0]
    (next_ifd,) = struct.unpack_from(order + "I", data, offset + 2 + 12 * count)
    return (tags.get(256, 0), tags.get(257, 0), tags.get(274, 1), next_ifd != 0,
            tags.get(258, 1), tags.get(339, 1))


# What restoring can take: to_float scales 8- and 16-bit unsigned samples; float ones are
# already on 0-1. Other integers (int16, int32, uint32 TIFFs) have no such scale: taken
# as they are, they reached the model as values in the thousands.
_DECODED_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


def decode_opencv(data: bytes, gray: bool = False):
    """(pixels (H, W, C) in RGB order, alpha (H, W) or None) of a 16-bit or float file, as
    OpenCV decodes it; gray: the file says its samples are gray."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)   # its multi-line reports
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if arr is None:
        raise MagnError("cannot decode this 16-bit/float image; the file may be truncated")
    if arr.dtype not in _DECODED_DTYPES:
        raise MagnError(f"holds {arr.dtype} samples; magn reads 8- and 16-bit unsigned and float images "
                        "(convert it to one of those)")
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if arr.ndim == 2:
        return arr[..., None], None
    if gray and arr.shape[2] in (3, 4):       # gray (+ alpha) that OpenCV made BGR(A)
        return np.ascontiguousarray(arr[..., :1]), (np.ascontiguousarray(arr[..., 3]) if arr.shape[2] == 4 else None)
    if arr.shape[2] == 1:
        return arr, None
    if arr.shape[2] == 2:                     # gray + alpha
        return np.ascontiguousarray(arr[..., :1]), np.ascontiguousarray(arr[..., 1])
    if arr.shape[2] == 4:
        return np.ascontiguousarray(arr[..., 2::-1]), np.ascontiguousarray(arr[..., 3])
    if arr.shape[2] == 3:
        return np.ascontiguousarray(arr[..., ::-1]), None
    raise MagnError(f"unsupported number of channels ({arr.shape[2]})")


def apply_orientation(arr: Optional[np.ndarray], orientation: int):
    """Apply an EXIF orientation (1-8) to (H, W[, C]), as Pillow's exif_transpose does."""
    if arr is None or orientation in (None, 1):
        return arr
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
           8: lambda a: np.rot90(a, 1)}
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr
