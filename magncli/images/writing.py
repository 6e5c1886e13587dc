"""Encoding an Image by the file's extension and writing it atomically: 16-bit kept for
PNG and TIFF, float for TIFF, alpha wherever the format has it, ICC and EXIF carried
(into a 16-bit PNG too, whose chunks OpenCV does not write).
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from PIL import Image as PILImage

from magncli.errors import MagnError
from magncli.fileio import OutputExists, atomic_write_bytes
from magncli.images.pixels import Image, from_float, to_float

WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF",
                 ".tiff": "TIFF", ".bmp": "BMP", ".webp": "WEBP"}


def write_image(path, image: Image, *, overwrite: bool = False, jpeg_quality: int = 95) -> Path:
    """Encode by extension and move into place atomically.

    16-bit pixels are kept for PNG and TIFF and reduced to 8 bits elsewhere; float
    pixels are kept for TIFF. Alpha is dropped only where the format has none (JPEG).
    """
    path = Path(path)
    ext = check_output_format(path)
    if path.exists() and not overwrite:
        raise OutputExists(f"{path}: already exists (pass overwrite=True to replace it)")
    data = encode_image(image, ext, jpeg_quality)
    atomic_write_bytes(path, data, exclusive=not overwrite)
    return path


def check_output_format(path) -> str:
    """The lower-case extension of `path`, or a MagnError if magn cannot write it."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in WRITE_FORMATS:
        raise MagnError(f"{path}: cannot write {ext or 'files without an extension'} "
                        f"(use one of {', '.join(sorted(set(WRITE_FORMATS)))})")
    return ext


# Float images that `magn degrade` and `magn eval` save: the extension and sample type
# of each named format (png and png16 clip and round; tiff keeps the values exactly).
FLOAT_FORMATS = {"png": (".png", np.uint8), "png16": (".png", np.uint16), "tiff": (".tiff", np.float32)}


def encode_float_image(img: np.ndarray, fmt: str = "png") -> bytes:
    """float32 HxWxC (C = 1 or 3, RGB) on [0, 1] -> the bytes of a file in `fmt`."""
    if fmt not in FLOAT_FORMATS:
        raise MagnError(f"unknown image format {fmt!r}; formats: {', '.join(FLOAT_FORMATS)}")
    ext, dtype = FLOAT_FORMATS[fmt]
    return encode_image(Image(from_float(img, dtype)), ext)


def encode_image(image: Image, ext: str, jpeg_quality: int = 95) -> bytes:
    fmt = WRITE_FORMATS[ext]
    pixels, alpha = image.pixels, image.alpha
    if fmt == "JPEG":
        alpha = None
    keeps_depth = (fmt in ("PNG", "TIFF") and pixels.dtype == np.uint16) or \
                  (fmt == "TIFF" and pixels.dtype == np.float32)
    if not keeps_depth and pixels.dtype != np.uint8:
        pixels = from_float(to_float(pixels), np.uint8)
        alpha = None if alpha is None else from_float(to_float(alpha), np.uint8)
    if pixels.dtype == np.uint8:
        return _encode_pillow(pixels, alpha, fmt, image.icc_profile, image.exif, jpeg_quality)
    if fmt == "PNG" and pixels.shape[2] == 1 and alpha is not None:
        data = _png16_gray_alpha(pixels[..., 0], alpha)    # neither OpenCV nor Pillow writes it
        return _png_add_chunks(data, image.icc_profile, image.exif)
    if pixels.shape[2] == 1 and alpha is not None:         # a TIFF: OpenCV writes 1, 3 or 4 samples
        pixels = np.repeat(pixels, 3, axis=2)
    data = _encode_opencv(pixels, alpha, ext)
    if fmt == "PNG":
        data = _png_add_chunks(data, image.icc_profile, image.exif)
    return data


def _encode_pillow(pixels, alpha, fmt, icc, exif, jpeg_quality) -> bytes:
    arr = pixels[..., 0] if pixels.shape[2] == 1 else pixels
    if alpha is not None:
        arr = np.dstack([pixels, alpha])
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[1 if arr.ndim == 2 else arr.shape[2]]
    pil = PILImage.fromarray(np.ascontiguousarray(arr), mode=mode)
    kwargs = {}
    if icc and fmt in ("PNG", "JPEG", "TIFF", "WEBP"):
        kwargs["icc_profile"] = icc
    if exif and fmt in ("PNG", "JPEG", "TIFF", "WEBP"):
        kwargs["exif"] = exif
    if fmt == "JPEG":
        kwargs.update(quality=jpeg_quality, subsampling=0 if jpeg_quality >= 90 else 2)
    if fmt == "WEBP":
        # exact: keep the colour under fully transparent pixels (libwebp drops it otherwise)
        kwargs.update(lossless=True, exact=True)
    if fmt == "TIFF":
        kwargs.update(compression="tiff_deflate")
    buf = io.BytesIO()
    pil.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _encode_opencv(pixels, alpha, ext) -> bytes:
    arr = pixels if pixels.shape[2] == 1 else pixels[..., ::-1]      # RGB -> BGR
    if alpha is not None:
        arr = np.dstack([arr, alpha])
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(arr))
    if not ok:
        raise MagnError(f"OpenCV could not encode a {pixels.dtype} image as {ext}")
    return buf.tobytes()


def _png16_gray_alpha(gray: np.ndarray, alpha: np.ndarray) -> bytes:
    """A 16-bit gray + alpha PNG (colour type 4), rows unfiltered."""
    h, w = gray.shape
    samples = np.dstack([gray, alpha]).astype(">u2").reshape(h, w * 2)
    rows = np.hstack([np.zeros((h, 1), np.uint8), samples.view(np.uint8)])   # filter type 0 per row
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + _png_chunk(b"IEND", b""))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_add_chunks(png: bytes, icc: Optional[bytes], exif: Optional[bytes]) -> bytes:
    """Insert iCCP/eXIf after IHDR (OpenCV writes 16-bit PNG but no metadata)."""
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if exif:
        payload = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
        extra += _png_chunk(b"eXIf", payload)
    ihdr_end = 8 + 8 + 13 + 4                 # signature + IHDR header, data, crc
    return png[:ihdr_end] + extra + png[ihdr_end:]
