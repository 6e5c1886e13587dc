"""Reading and writing images: bit depth, alpha, EXIF orientation, ICC, atomic writes.

    img = read_image("photo.jpg")          # Image: pixels (H, W, C) uint8/uint16/float32
    x = img.to_float()                     # (H, W, C) float32 in [0, 1], C = 1 or 3
    out = img.with_pixels(restored)        # same bit depth, alpha, ICC and EXIF
    write_image("photo_magn.png", out)     # temp file + rename; refuses to overwrite

Decoding: Pillow for 8-bit files (palette, gray+alpha, EXIF, ICC), OpenCV for 16-bit
and float files, which Pillow reduces to 8 bits. Paths are read as bytes, so non-ASCII
names work everywhere. The alpha channel is carried through untouched.

Refused, each with a one-line MagnError and before any pixel is decoded:
- an image whose header declares more than MAX_PIXELS (width x height; 400 million, or
  $MAGN_MAX_PIXELS). This is the one size rule: while magn decodes, Pillow's own
  decompression-bomb limit is the same number, and its error and warning become this
  message;
- a PNG too small to hold the pixels its header declares (truncated, or a bomb);
- a file of several frames or pages (animated GIF/PNG/WebP, multi-page TIFF): only
  single-frame images are read, and the other frames are never dropped silently.
Truncated image data is an error, never gray or black padding.
"""
from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from PIL import Image as PILImage
from PIL import ImageFile, ImageOps, UnidentifiedImageError

from magncli.errors import MagnError
from magncli.fileio import OutputExists, atomic_write_bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF",
                 ".tiff": "TIFF", ".bmp": "BMP", ".webp": "WEBP"}
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
_ORIENTATION_TAG = 0x0112


@dataclass
class Image:
    """Decoded pixels plus what must survive a round trip.

    pixels: (H, W, C), C = 1 (gray) or 3 (RGB, in RGB order); uint8, uint16 or float32.
    alpha:  (H, W) of the same dtype, or None.
    """
    pixels: np.ndarray
    alpha: Optional[np.ndarray] = None
    icc_profile: Optional[bytes] = None
    exif: Optional[bytes] = None          # orientation already applied and reset to 1
    source_format: str = ""
    jpeg_quantization: Optional[dict] = None   # a JPEG file's tables {0: luma, 1: chroma}

    @property
    def channels(self) -> int:
        return self.pixels.shape[2]

    @property
    def bit_depth(self) -> int:
        return {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(self.pixels.dtype, 32)

    def to_float(self) -> np.ndarray:
        """(H, W, C) float32 in [0, 1] (float inputs are passed through as they are)."""
        return to_float(self.pixels)

    def with_pixels(self, restored: np.ndarray) -> "Image":
        """A copy holding `restored` ((H, W, C) float) quantised to this image's depth."""
        return replace(self, pixels=from_float(restored, self.pixels.dtype))


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8, clipped and *rounded* (half up, as MATLAB's round for
    non-negative values). Never truncates: truncation costs ~0.3 dB at 42 dB."""
    if img.dtype == np.uint8:
        return img
    return from_float(img, np.uint8)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The centre size x size of (H, W, ...), or less where the image is smaller; 0: all of it."""
    if not size:
        return img
    top = max(0, (img.shape[0] - size) // 2)
    left = max(0, (img.shape[1] - size) // 2)
    return img[top:top + size, left:left + size]


def to_float(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) / 65535.0
    return pixels.astype(np.float32)


def from_float(x: np.ndarray, dtype) -> np.ndarray:
    """Clip to [0, 1] and round half up (MATLAB's im2uint8/im2uint16; never truncate) to
    `dtype`; float32 passes unclipped. The one quantiser of restore, eval and degrade."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return x.astype(np.float32)
    peak = 255.0 if dtype == np.uint8 else 65535.0
    return np.floor(np.clip(x.astype(np.float64), 0.0, 1.0) * peak + 0.5).astype(dtype)


# --------------------------------------------------------------------------- reading
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
        if data[:4] in _TIFF_MAGIC:
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
            orientation = exif.get(_ORIENTATION_TAG, 1)
            if _is_high_depth(data, pil):
                pixels, alpha = _decode_opencv(data, gray=_declares_gray(data, pil))
                pixels, alpha = _apply_orientation(pixels, orientation), _apply_orientation(alpha, orientation)
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
    return Image(pixels, alpha, icc, exif_bytes, pil.format or "",
                 {k: list(v) for k, v in quant.items()} if quant else None)


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
    if _ORIENTATION_TAG in exif:
        exif[_ORIENTATION_TAG] = 1
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


def _is_high_depth(data: bytes, pil: PILImage.Image) -> bool:
    """True for 16-bit and float files, which Pillow would reduce to 8 bits."""
    if pil.format == "PNG" and len(data) > 24:
        return data[24] == 16                 # IHDR bit depth
    if pil.format == "TIFF":
        bits = pil.tag_v2.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return max(bits) > 8
    return pil.mode in ("I;16", "I;16B", "I;16L", "I", "F")


def _declares_gray(data: bytes, pil: PILImage.Image) -> bool:
    """Whether the file says its samples are gray (OpenCV expands gray + alpha to BGRA)."""
    if pil.format == "PNG" and len(data) > 25:
        return data[25] in (0, 4)             # IHDR colour type: gray, gray + alpha
    if pil.format == "TIFF":
        return pil.tag_v2.get(262) in (0, 1)  # photometric: WhiteIsZero, BlackIsZero
    return False


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


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")


def _tiff_first_ifd(data: bytes):
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


def _decode_tiff_opencv(data: bytes) -> Image:
    """A TIFF Pillow cannot open (RGB float32, as magn itself writes them): its header is
    checked here as _decode checks others, and OpenCV decodes it."""
    try:
        w, h, orientation, more, bits, sample_format = _tiff_first_ifd(data)
    except struct.error:
        raise MagnError("cannot decode this TIFF (its header is truncated)") from None
    _check_size(w, h)
    if more:
        raise MagnError("has several pages (a multi-page TIFF); magn reads single-frame images "
                        "only: split it into one file per page")
    if sample_format == 3 and bits not in (32, 64):   # OpenCV reads float32/64 TIFFs only
        raise MagnError(f"is a {bits}-bit float TIFF, which magn cannot read; save it as 32-bit float")
    pixels, alpha = _decode_opencv(data)
    return Image(_apply_orientation(pixels, orientation), _apply_orientation(alpha, orientation),
                 None, None, "TIFF", None)


# What restoring can take: to_float scales 8- and 16-bit unsigned samples; float ones are
# already on 0-1. Other integers (int16, int32, uint32 TIFFs) have no such scale: taken
# as they are, they reached the model as values in the thousands.
_DECODED_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


def _decode_opencv(data: bytes, gray: bool = False):
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


def _apply_orientation(arr: Optional[np.ndarray], orientation: int):
    """Apply an EXIF orientation (1-8) to (H, W[, C]), as Pillow's exif_transpose does."""
    if arr is None or orientation in (None, 1):
        return arr
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, -1),
           7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
           8: lambda a: np.rot90(a, 1)}
    op = ops.get(orientation)
    return np.ascontiguousarray(op(arr)) if op else arr


# --------------------------------------------------------------------------- writing
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
