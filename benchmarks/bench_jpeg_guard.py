"""What the published JPEG models gain at high quality, per chroma subsampling, measured
on the training images that training holds out for validation (never on a test set):
the measurement behind restore's guard (magncli/tasks.py, JPEG_GUARD).

    python benchmarks/bench_jpeg_guard.py                 # -> benchmarks/results/jpeg-guard.json
    python benchmarks/bench_jpeg_guard.py --qualities 95,100 --only color --subsamplings 4:4:4 --json out.json

Each held-out image (24 of CBSD432 for the color model, 20 of Train400 for the gray one,
as train/dejpeg-color.toml and train/dejpeg-gray.toml hold them out) is saved by Pillow
at each quality and subsampling, read back as `magn restore` reads it (quality and
subsampling from the file), restored with restore's defaults by the model restore picks,
rounded to 8 bits as the output file is, and scored (PSNR on RGB, or gray) against the
clean image beside the decoded JPEG's. Per cell: mean gain and the worst image's gain.

CBSD432's files are themselves the BSDS500 JPEGs (q95 4:2:0): saved again at q95 4:2:0 they
barely change, and above q95 the "clean" image keeps its own q95 artifacts, so the color
cells at q >= 95 are a re-saved JPEG's case (which people meet too) and pessimistic for a
camera original. Train400 (gray) is PNG.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (model, training images, held-out count, Pillow subsamplings): the recipes' val_holdout.
CASES = [
    ("color", "CBSD432", 24, {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}),
    ("gray", "Train400", 20, {"none": None}),
]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main() -> None:
    from PIL import Image as PILImage

    from magncli.images import read_image
    from magncli.restore import Restorer
    from magncli.training.data import resolve_data_folder, scan_images

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qualities", default="70,80,85,90,92,95,98,100")
    ap.add_argument("--only", default="", help="color or gray (default: both)")
    ap.add_argument("--subsamplings", default="", help="comma list, e.g. 4:4:4 (default: all of the model's)")
    ap.add_argument("--json", default="benchmarks/results/jpeg-guard.json")
    ap.add_argument("--halve", action="store_true",
                    help="halve each clean image first (area): a JPEG's own 8x8 grid and artifacts go, "
                         "so a color reference is no longer a q95 JPEG")
    args = ap.parse_args()
    qualities = [int(q) for q in args.qualities.split(",")]
    # The published defaults with restore's options, forced past the guard this measures.
    restorer = Restorer(task="dejpeg", force=True)
    cells = []
    for key, data, holdout, subsamplings in CASES:
        if args.only and key != args.only:
            continue
        _, held_out = scan_images(resolve_data_folder(data)).split_holdout(holdout)
        for name, subsampling in subsamplings.items():
            if args.subsamplings and name not in args.subsamplings.split(","):
                continue
            for quality in qualities:
                gains = {}
                for path in held_out:
                    clean = read_image(path).pixels                                # uint8 (H, W, C)
                    if args.halve:
                        import cv2
                        h, w = clean.shape[0] // 2, clean.shape[1] // 2
                        clean = cv2.resize(clean, (w, h), interpolation=cv2.INTER_AREA).reshape(h, w, -1)
                    mode = "L" if key == "gray" else "RGB"
                    pil = PILImage.fromarray(clean[..., 0] if key == "gray" else clean[..., :3]).convert(mode)
                    buf = io.BytesIO()
                    extra = {} if subsampling is None else {"subsampling": subsampling}
                    pil.save(buf, "JPEG", quality=quality, **extra)
                    with tempfile.TemporaryDirectory() as tmp:     # read from a file, as restore reads it
                        jpeg_path = Path(tmp) / f"{path.stem}.jpg"
                        jpeg_path.write_bytes(buf.getvalue())
                        image = read_image(jpeg_path)
                    restored, info = restorer.restore(image)
                    out = restored.pixels                                        # 8 bits, as written
                    target = clean[..., :image.channels]
                    gains[path.name] = round(_psnr(out, target) - _psnr(image.pixels, target), 4)
                values = list(gains.values())
                cell = {"model": key, "data": data + (" halved" if args.halve else ""),
                        "held_out": len(held_out), "subsampling": name,
                        "quality": quality, "quality_read": info.get("quality"),
                        "subsampling_read": info.get("subsampling"), "weights": info.get("model"),
                        "mean_gain_db": round(float(np.mean(values)), 4),
                        "worst_gain_db": round(float(np.min(values)), 4),
                        "worst_image": min(gains, key=gains.get), "gains_db": gains}
                cells.append(cell)
                print(f"{key:5s} {name:5s} q{quality:3d}: mean {cell['mean_gain_db']:+.3f} dB, "
                      f"worst {cell['worst_gain_db']:+.3f} ({cell['worst_image']})", flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"command": "python " + " ".join(["benchmarks/bench_jpeg_guard.py",
                                                                              *sys.argv[1:]]),
                                           "cells": cells}, indent=1) + "\n")


if __name__ == "__main__":
    main()
