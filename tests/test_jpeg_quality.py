"""Reading a JPEG file's quality from its quantization tables (magncli.jpeg_quality)."""
import io

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from magncli.jpeg_quality import estimate_jpeg_quality


def _quant_of(encoded: bytes):
    return PILImage.open(io.BytesIO(encoded)).quantization


@pytest.mark.parametrize("quality", range(1, 101))
def test_quality_is_read_exactly_from_libjpeg_tables(quality):
    buf = io.BytesIO()
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG", quality=quality)
    assert estimate_jpeg_quality(_quant_of(buf.getvalue())) == (quality, True)
    ok, enc = cv2.imencode(".jpg", np.zeros((8, 8), np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert estimate_jpeg_quality(_quant_of(enc.tobytes())) == (quality, True)


def test_custom_tables_give_the_nearest_quality():
    buf = io.BytesIO()
    table = [max(1, int(v)) for v in np.linspace(3, 40, 64)]   # no libjpeg quality makes this
    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "JPEG", qtables=[table])
    quality, exact = estimate_jpeg_quality(_quant_of(buf.getvalue()))
    assert not exact and 1 <= quality <= 100
