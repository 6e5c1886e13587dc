"""Decoding image files into an Image: the one size rule (MAX_PIXELS, checked from the
header before any pixel is decoded), single frames only, truncation as an error, and
Pillow's 8-bit path (palette, gray + alpha, EXIF orientation, ICC). 16-bit and float
files go to OpenCV (magncli.images.high_depth).
"""
from __future__ import annotations

import io
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image as PILImage
from PIL import ImageFile, ImageOps, UnidentifiedImageError

from magncli.errors import MagnError
from magncli.images.high_depth import (ORIENTATION_TAG, TIFF_MAGIC, apply_orientation, declares_gray, decode_opencv,
                                       is_high_depth, tiff_first_ifd)
from magncli.images.pixels import Image

DEFAULT_MAX_PIXELS = 400_000_000


def _max_pixels_setting(text: Optional[str]) -> Optional[int]:
    """MAGN_MAX_PIXELS as a positive int; None for a value that is not one (read at import:
    raising here would break every command, `--version` included; _limit() says it)."""
    if text is None or not text.strip():
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        return None
    return value if value > 0 else None


MAX_PIXELS = _max_pixels_setting(os.environ.get("MAGN_MAX_PIXELS"))
# Deflate cannot compress more than 1032:1, so a PNG holds at most this many bytes of
# (filtered) pixel rows per byte of file; a header that declares more is a lie.
_PNG_MAX_RATIO = 1100


def read_image(path) -> Image:
    """Decode an image file; every failure is a one-line MagnError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MagnError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MagnError(f"{path}: is a directory") from None
    except OSError as e:
        raise MagnError(f"{path}: cannot read ({e.strerror or e})") from None
    if not data:
        raise MagnError(f"{path}: empty file (0 bytes)")
    try:
        return decode_image(data)
    except MagnError as e:
        raise MagnError(f"{path}: {e}") from None


def declared_pixels(path) -> Optional[int]:
    """width x height as the file's header declares it, without decoding the pixels
    (for progress estimates); None when the header cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with PILImage.open(path) as pil:
                w, h = pil.size
        return int(w) * int(h)
    except Exception:  # noqa: BLE001 - only an estimate: reading the image will say what is wrong
        return None


def _limit() -> int:
    """MAX_PIXELS, or the one-line error of a MAGN_MAX_PIXELS that is not a pixel count."""
    if MAX_PIXELS is None:
        raise MagnError(f"MAGN_MAX_PIXELS must be a positive whole number of pixels, "
                        f"got {os.environ.get('MAGN_MAX_PIXELS', '')!r}")
    return MAX_PIXELS


def _check_size(w: int, h: int) -> None:
    """The one size rule, from a header's width and height, before any pixel is decoded."""
    if w * h > _limit():
        raise _too_large(w * h, f"{w}x{h}")
    if w == 0 or h == 0:
        raise MagnError("image has no pixels")


def _too_large(pixels: int, size: str = "") -> MagnError:
    return MagnError(f"too large: {size + ' = ' if size else ''}{pixels:,} pixels, over the "
                     f"limit of {_limit():,} (width x height; set MAGN_MAX_PIXELS to raise it)")


def _bomb_pixels(error: Exception) -> int:
    """The pixel count in Pillow's DecompressionBombError ("Image size (N pixels) ...")."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    return int(found.group(1)) if found else 2 * _limit() + 1


def _png_declared_bytes(data: bytes, w: int, h: int) -> int:
    """Bytes of filtered rows that a non-interlaced PNG of this header decodes to."""
    depth, color = data[24], data[25]
    samples = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color, 1)
    return h * (1 + (w * samples * depth + 7) // 8)


def decode_image(data: bytes) -> Image:
    # Pillow's bomb check uses the same limit as magn's, so that there is one rule, and
    # truncated data is an error even if another library told Pillow to pad it; the
    # caller's own settings are put back afterwards.
    limit = _limit()
    saved = PILImage.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    PILImage.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = limit, False
    try:
        return _decode(data)
    finally:
        PILImage.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _decode(data: bytes) -> Image:
    try:
        with warnings.catch_warnings():
            # Above MAX_PIXELS Pillow warns (we refuse below, naming the size); above
            # twice that it raises DecompressionBombError. Its other header warnings
            # ("Corrupt EXIF data") are no message for a user: a file that cannot be
            # read fails below with one line.
            warnings.simplefilter("ignore")
            pil = PILImage.open(io.BytesIO(data))
            pil.size  # noqa: B018 - forces the header parse
    except PILImage.DecompressionBombError as e:
        raise _too_large(_bomb_pixels(e)) from None
    except UnidentifiedImageError:
        if data[:4] in TIFF_MAGIC:
            return _decode_tiff_opencv(data)
        raise MagnError("not an image, or a format magn cannot read") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as e:
        raise MagnError(f"cannot decode ({e})") from None
    w, h = pil.size
    _check_size(w, h)
    if pil.format == "PNG" and len(data) > 25 and \
            _png_declared_bytes(data, w, h) > _PNG_MAX_RATIO * len(data):
        raise MagnError(f"the file ({len(data):,} bytes) is too small to hold the {w}x{h} "
                        "pixels its header declares; it is truncated or corrupt")
    frames = _frame_count(pil)
    if frames > 1:
        raise MagnError(f"has {frames} frames or pages (an animation or a multi-page file); "
                        "magn reads single-frame images only: split it into one file per frame")
    try:
        # Decoders' warnings are not printed (a multi-line Python warning is no message
        # for a user); one that says the data is truncated makes the file an error.
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            # getexif() may read to the end of the file (PNG eXIf after IDAT): inside the guard.
            exif = pil.getexif()
            orientation = exif.get(ORIENTATION_TAG, 1)
            if is_high_depth(data, pil):
                pixels, alpha = decode_opencv(data, gray=declares_gray(data, pil))
                pixels, alpha = apply_orientation(pixels, orientation), apply_orientation(alpha, orientation)
            else:
                pixels, alpha = _decode_pillow(pil)
        truncated = [str(w.message) for w in said if "truncat" in str(w.message).lower()]
        if truncated:
            raise MagnError(f"cannot decode ({truncated[0]}); the file is truncated")
    except PILImage.DecompressionBombError as e:
        raise _too_large(_bomb_pixels(e)) from None
    except MemoryError:
        raise MagnError(f"not enough memory to decode {w}x{h} pixels") from None
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as e:
        raise MagnError(f"cannot decode ({e}); the file may be truncated or corrupt") from None
    icc = pil.info.get("icc_profile") or None
    exif_bytes = _exif_to_carry(exif, pil.format)
    quant = getattr(pil, "quantization", None) if pil.format == "JPEG" else None
    # Pillow's layer: (component id, h, v, table) per component of the frame header.
    layer = getattr(pil, "layer", None) if pil.format == "JPEG" else None
    return Image(pixels, alpha, icc, exif_bytes, pil.format or "",
                 {k: list(v) for k, v in quant.items()} if quant else None,
                 [(h, v) for _, h, v, _ in layer] if layer else None)


# Tags of a TIFF's own first IFD that describe the picture, not how the file stores it.
_DESCRIPTIVE_TIFF_TAGS = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)  # description,
#                         make, model, software, date, artist, copyright


def _exif_to_carry(exif, source_format: str) -> Optional[bytes]:
    """The EXIF block an output carries, orientation reset (the pixels are upright now).
    A TIFF's getexif() is the file's own IFD (strip offsets, sizes, a BigTIFF's 64-bit
    header): written as EXIF it broke Pillow's TIFF writer after the restore and gave
    PNG/JPEG outputs an EXIF block no reader takes. Of it only the descriptive tags go."""
    if source_format == "TIFF":
        kept = PILImage.Exif()
        for tag in _DESCRIPTIVE_TIFF_TAGS:
            if tag in exif:
                kept[tag] = exif[tag]
        exif = kept
    if not len(exif):
        return None
    if ORIENTATION_TAG in exif:
        exif[ORIENTATION_TAG] = 1
    return exif.tobytes()


def _frame_count(pil: PILImage.Image) -> int:
    """Frames of an animation, pages of a TIFF. A JPEG's MPO extension (a camera's
    preview or depth images) is not counted: the first image is the photo."""
    if pil.format == "MPO":
        return 1
    try:
        return int(getattr(pil, "n_frames", 1) or 1)
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as e:
        raise MagnError(f"cannot decode ({e}); the file may be truncated or corrupt") from None


def _decode_pillow(pil: PILImage.Image):
    """8-bit decode: orientation applied, palette/1-bit/CMYK mapped to gray or RGB(A)."""
    pil = ImageOps.exif_transpose(pil)
    mode = pil.mode
    if mode in ("L", "RGB", "1") and "transparency" in pil.info:
        # A tRNS chunk (one gray level or colour that is transparent) is alpha too.
        mode = "LA" if mode in ("L", "1") else "RGBA"
    elif mode == "P":
        mode = "RGBA" if "transparency" in pil.info else "RGB"
    elif mode == "PA":
        mode = "RGBA"
    elif mode == "1":
        mode = "L"
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        mode = "RGBA" if "A" in mode else "RGB"       # CMYK, YCbCr, ...
    arr = np.asarray(pil.convert(mode))
    if arr.ndim == 2:
        arr = arr[..., None]
    if mode in ("LA", "RGBA"):
        return np.ascontiguousarray(arr[..., :-1]), np.ascontiguousarray(arr[..., -1])
    return np.ascontiguousarray(arr), None


def _decode_tiff_opencv(data: bytes) -> Image:
    """A TIFF Pillow cannot open (RGB float32, as magn itself writes them): its header is
    checked here as _decode checks others, and OpenCV decodes it."""
    try:
        w, h, orientation, more, bits, sample_format = tiff_first_ifd(data)
    except struct.error:
        raise MagnError("cannot decode this TIFF (its header is truncated)") from None
    _check_size(w, h)
    if more:
        raise MagnError("has several pages (a multi-page TIFF); magn reads single-frame images "
                        "only: split it into one file per page")
    if sample_format == 3 and bits not in (32, 64):   # OpenCV reads float32/64 TIFFs only
        raise MagnError(f"is a {bits}-bit float TIFF, which magn cannot read; save it as 32-bit float")
    pixels, alpha = decode_opencv(data)
    return Image(apply_orientation(pixels, orientation), apply_orientation(alpha, orientation),
                 None, None, "TIFF", None)
