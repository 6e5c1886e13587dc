"""#35's "never worse" bar on whole test images: Kodak24 and LIVE1 saved as JPEG at
q50-100, at each chroma subsampling and as gray JPEGs, by Pillow and by OpenCV (libjpeg),
then restored by `magn restore --task dejpeg` as a user runs it (defaults, the quality
and subsampling read from the file, the guard on). Per cell (encoder x subsampling x
quality): the mean gain over the images, the worst image, and whether the bar holds
(mean >= 0 and no image below -0.05 dB). A file the guard returns unchanged gains 0.

    python benchmarks/bench_jpeg_grid.py                        # -> benchmarks/results/jpeg-never-worse.json
    python benchmarks/bench_jpeg_grid.py --sets Kodak24 --qualities 95 --images 4 --json /tmp/x.json

This scores test sets: it is the bar's measurement, never a way to choose anything
(the guard was set on held-out training images, benchmarks/bench_jpeg_guard.py).
tests/test_jpeg_never_worse.py holds a small version (three crops). The restored image
is rounded to 8 bits, as the output file is.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BAR_WORST_DB = -0.05
PIL_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


def pillow_jpeg(pixels: np.ndarray, quality: int, subsampling: str) -> bytes:
    """Pillow's encoder (libjpeg-turbo, baseline, standard tables)."""
    from PIL import Image

    buf = io.BytesIO()
    if subsampling == "gray":
        Image.fromarray(pixels, "L").save(buf, "JPEG", quality=quality)
    else:
        Image.fromarray(pixels).save(buf, "JPEG", quality=quality, subsampling=PIL_SUBSAMPLING[subsampling])
    return buf.getvalue()


def opencv_jpeg(pixels: np.ndarray, quality: int, subsampling: str) -> bytes:
    """OpenCV's encoder (libjpeg), through the library's own protocol function."""
    from magncli.degrade import jpeg_encode

    return jpeg_encode(pixels, quality, "4:2:0" if subsampling == "gray" else subsampling)


ENCODERS = {"pillow": pillow_jpeg, "opencv": opencv_jpeg}


def main() -> None:
    sys.path.insert(0, str(REPO))
    from PIL import Image as PILImage

    from magncli.devices import cpu_description
    from magncli.images import read_image
    from magncli.metrics import psnr
    from magncli.restore import Restorer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=os.environ.get("MAGN_DATA", str(REPO.parent / "shared" / "datasets")))
    ap.add_argument("--sets", default="Kodak24,LIVE1")
    ap.add_argument("--qualities", default="50,70,90,95,98,100")
    ap.add_argument("--subsamplings", default="4:4:4,4:2:2,4:2:0,gray")
    ap.add_argument("--encoders", default=",".join(ENCODERS))
    ap.add_argument("--images", type=int, default=0, help="the first N images of each set (0: all)")
    ap.add_argument("--json", default="benchmarks/results/jpeg-never-worse.json")
    args = ap.parse_args()
    qualities = [int(q) for q in args.qualities.split(",")]
    subsamplings = args.subsamplings.split(",")
    encoders = args.encoders.split(",")

    restorer = Restorer(task="dejpeg")
    gains: dict = {}                  # (encoder, subsampling, quality) -> [(image, gain)]
    start = time.perf_counter()
    tmp_dir = tempfile.TemporaryDirectory()
    tmp = tmp_dir.name
    for set_name in args.sets.split(","):
        files = sorted(p for p in (Path(args.data_root) / set_name).iterdir()
                       if p.suffix.lower() in (".png", ".bmp", ".tif", ".jpg"))
        for path in files[:args.images or None]:
            rgb = np.asarray(PILImage.open(path).convert("RGB"))              # (H, W, 3) uint8
            gray = np.asarray(PILImage.open(path).convert("L"))               # (H, W) uint8
            for subsampling in subsamplings:
                truth = gray if subsampling == "gray" else rgb
                clean = truth.reshape(*truth.shape[:2], -1).astype(np.float32) / 255    # (H, W, C)
                for encoder in encoders:
                    for quality in qualities:
                        file = Path(tmp) / "saved.jpg"
                        file.write_bytes(ENCODERS[encoder](truth, quality, subsampling))
                        jpeg = read_image(file)                       # as restore reads it
                        out, info = restorer.restore(jpeg)
                        gain = 0.0 if "unchanged" in info else psnr(out.to_float(), clean) - psnr(jpeg.to_float(), clean)
                        gains.setdefault((encoder, subsampling, quality), []).append((f"{set_name}/{path.stem}", gain))
            print(f"{set_name}/{path.stem} done ({time.perf_counter() - start:.0f} s)", flush=True)

    tmp_dir.cleanup()
    cells, failing = [], []
    for (encoder, subsampling, quality), rows in sorted(gains.items()):
        values = np.array([g for _, g in rows])
        worst = min(rows, key=lambda r: r[1])
        holds = bool(values.mean() >= 0 and worst[1] >= BAR_WORST_DB)
        cells.append({"encoder": encoder, "subsampling": subsampling, "quality": quality, "images": len(rows),
                      "mean_gain_db": round(float(values.mean()), 4), "worst_gain_db": round(worst[1], 4),
                      "worst_image": worst[0], "below_bar": int((values < BAR_WORST_DB).sum()), "holds": holds})
        if not holds:
            failing.append(cells[-1])
    print(f"{'encoder':7s} {'sub':5s} {'q':>3s} {'mean dB':>8s} {'worst dB':>9s}  worst image")
    for c in cells:
        print(f"{c['encoder']:7s} {c['subsampling']:5s} {c['quality']:3d} {c['mean_gain_db']:8.3f} "
              f"{c['worst_gain_db']:9.3f}  {c['worst_image']}{'' if c['holds'] else '   <- bar not held'}")
    print(f"{len(cells) - len(failing)} of {len(cells)} cells hold the bar")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": {"cpu": cpu_description(), "command": " ".join(["python", *sys.argv]),
                                        "seconds": round(time.perf_counter() - start)},
                               "cells": cells}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
