"""Hostile and unlucky input files (issue #19), made in a few bytes each."""
import struct
import zlib

import numpy as np
from PIL import Image as PILImage


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int, rows: bytes = b"\0" * 64, *, end: bool = True) -> bytes:
    """An 8-bit RGB PNG whose header claims width x height, holding `rows` of pixel data
    (a tiny, truncated IDAT unless `rows` is complete)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows))
    return data + (_chunk(b"IEND", b"") if end else b"")


def bomb(path, width=100_000, height=100_000):
    path.write_bytes(png_claiming(width, height))
    return path


def frames(n=3, size=(8, 8)):
    return [PILImage.fromarray(np.full((*size, 3), 40 * i, np.uint8)) for i in range(n)]


def animated(path, n=3):
    """An animated GIF/PNG/WebP or a multi-page TIFF, by the extension of `path`."""
    first, *rest = frames(n)
    first.save(path, save_all=True, append_images=rest)
    return path
