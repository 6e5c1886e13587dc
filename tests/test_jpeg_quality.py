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


def test_tables_of_zero_steps_are_refused_not_read_as_quality_50():
    """Issue #37: an all-zero table gave numpy's divide-by-zero warning and "quality 50
    from the JPEG tables"."""
    from magncli.errors import MagnError
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no numpy warning either
        with pytest.raises(MagnError, match="steps of 0"):
            estimate_jpeg_quality({0: [0] * 64, 1: [0] * 64})
        with pytest.raises(MagnError, match="pass quality=Q"):
            estimate_jpeg_quality({0: [16] * 63 + [0]})
