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


# --------------------------------------------------------------------------- subsampling
def _subsampling_of_file(tmp_path, encoded: bytes) -> str:
    from magncli.images import read_image
    from magncli.jpeg_quality import jpeg_subsampling
    path = tmp_path / "a.jpg"
    path.write_bytes(encoded)
    return jpeg_subsampling(read_image(path).jpeg_sampling)


_RGB = np.random.default_rng(0).integers(0, 256, (24, 40, 3)).astype(np.uint8)


@pytest.mark.parametrize("subsampling,name", [(0, "4:4:4"), (1, "4:2:2"), (2, "4:2:0")])
@pytest.mark.parametrize("extra", [{}, {"progressive": True}, {"optimize": True}])
def test_subsampling_is_read_from_pillow_files(tmp_path, subsampling, name, extra):
    buf = io.BytesIO()
    PILImage.fromarray(_RGB).save(buf, "JPEG", quality=90, subsampling=subsampling, **extra)
    assert _subsampling_of_file(tmp_path, buf.getvalue()) == name


@pytest.mark.parametrize("flag,name", [("444", "4:4:4"), ("422", "4:2:2"), ("420", "4:2:0"), ("440", "4:4:0"),
                                       ("411", "4:1:1")])
def test_subsampling_is_read_from_opencv_files(tmp_path, flag, name):
    if not hasattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{flag}"):
        pytest.skip("this OpenCV cannot choose the JPEG sampling factors")
    ok, enc = cv2.imencode(".jpg", _RGB, [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                          getattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{flag}")])
    assert ok and _subsampling_of_file(tmp_path, enc.tobytes()) == name


def test_a_gray_jpeg_has_no_subsampling_and_a_png_no_factors(tmp_path):
    from magncli.images import read_image
    buf = io.BytesIO()
    PILImage.fromarray(_RGB[..., 0]).save(buf, "JPEG", quality=90)
    assert _subsampling_of_file(tmp_path, buf.getvalue()) == "none"
    ok, enc = cv2.imencode(".jpg", _RGB[..., 0], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert _subsampling_of_file(tmp_path, enc.tobytes()) == "none"
    PILImage.fromarray(_RGB).save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png").jpeg_sampling is None


def test_unusual_factors_are_named_by_themselves():
    from magncli.jpeg_quality import jpeg_subsampling
    assert jpeg_subsampling([(2, 2), (1, 1), (2, 1)]) == "2x2,1x1,2x1"
    assert jpeg_subsampling([(1, 1), (1, 1), (1, 1), (1, 1)]) == "4:4:4"      # CMYK / YCCK
