"""#35's "never worse" grid, small: JPEG files as the common encoders write them, at
qualities 50-100 and every chroma subsampling, through `magn restore --task dejpeg` with
the shipped models. The bar of the issue, per cell (quality x encoder x subsampling):
the mean gain over the images is >= 0 and no image loses more than 0.05 dB. A file the
models cannot improve may come back unchanged (the guard): a gain of exactly 0.

The oracle is the JPEG itself, decoded by the same reader, against the clean crop.
Needs ../shared/datasets (skipped without it). Without the guard's table
(tasks.JPEG_GUARD, measured on held-out training images by benchmarks/bench_jpeg_guard.py)
q95 4:4:4 loses 0.8 dB on kodim05's crop here."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from magncli.images import read_image
from magncli.metrics import psnr
from magncli.restore import Restorer

CROPS = [("Kodak24", "kodim05"), ("Kodak24", "kodim23"), ("LIVE1", "buildings")]
QUALITIES = (50, 90, 95, 98, 100)
PIL_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
CV_SUBSAMPLING = {"4:4:4": "IMWRITE_JPEG_SAMPLING_FACTOR_444", "4:2:2": "IMWRITE_JPEG_SAMPLING_FACTOR_422",
                  "4:2:0": "IMWRITE_JPEG_SAMPLING_FACTOR_420"}


pytestmark = pytest.mark.usefixtures("shipped_only")   # conftest: only weights/ serves


def _crop(set_name: str, stem: str, data_root, size: int = 128) -> np.ndarray:
    path = next((data_root / set_name).glob(f"{stem}.*"))
    rgb = np.asarray(PILImage.open(path).convert("RGB"))                     # (H, W, 3) uint8
    y, x = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
    return np.ascontiguousarray(rgb[y:y + size, x:x + size])


def _pillow(pixels: np.ndarray, quality: int, subsampling: str, **options) -> bytes:
    buf = io.BytesIO()
    if subsampling == "gray":
        PILImage.fromarray(pixels, "L").save(buf, "JPEG", quality=quality, **options)
    else:
        PILImage.fromarray(pixels).save(buf, "JPEG", quality=quality,
                                        subsampling=PIL_SUBSAMPLING[subsampling], **options)
    return buf.getvalue()


def _opencv(pixels: np.ndarray, quality: int, subsampling: str) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if subsampling != "gray":
        if not hasattr(cv2, CV_SUBSAMPLING[subsampling]):
            pytest.skip(f"this OpenCV ({cv2.__version__}) cannot choose the chroma subsampling")
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, getattr(cv2, CV_SUBSAMPLING[subsampling])]
        pixels = pixels[..., ::-1]                                          # OpenCV writes BGR
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(pixels), params)
    assert ok
    return data.tobytes()


ENCODERS = {
    "pillow": lambda px, q, s: _pillow(px, q, s),
    "pillow progressive": lambda px, q, s: _pillow(px, q, s, progressive=True),
    "pillow optimized": lambda px, q, s: _pillow(px, q, s, optimize=True),
    "opencv": _opencv,
}


@pytest.mark.parametrize("encoder", list(ENCODERS))
@pytest.mark.parametrize("subsampling", ["4:4:4", "4:2:2", "4:2:0", "gray"])
def test_no_jpeg_comes_back_worse(data_root, tmp_path, encoder, subsampling):
    restorer = Restorer(task="dejpeg")
    truths = [_crop(set_name, stem, data_root) for set_name, stem in CROPS]
    if subsampling == "gray":
        truths = [np.asarray(PILImage.fromarray(t).convert("L")) for t in truths]   # (H, W) uint8
    for quality in QUALITIES:
        gains = []
        for (set_name, stem), truth in zip(CROPS, truths):
            path = tmp_path / f"{stem}.jpg"
            path.write_bytes(ENCODERS[encoder](truth, quality, subsampling))
            jpeg = read_image(path)
            out, info = restorer.restore(jpeg)
            assert info["quality"] == quality
            clean = truth.reshape(*truth.shape[:2], -1).astype(np.float32) / 255    # (H, W, C)
            gain = psnr(out.to_float(), clean) - psnr(jpeg.to_float(), clean)
            if "unchanged" in info:
                assert gain == 0.0
            gains.append(gain)
            assert gain >= -0.05, (f"q{quality} {subsampling} {encoder}", stem, round(gain, 3))
        assert np.mean(gains) >= 0.0, (f"q{quality} {subsampling} {encoder}", [round(g, 3) for g in gains])
