"""bf16 against fp32 for the default checkpoints, end to end through `magn eval`'s engine:
the PSNR change on each standard set and the time per megapixel of each precision.

    python benchmarks/bench_precision.py                          # every default checkpoint
    python benchmarks/bench_precision.py --only denoise-gray --json out.json
    python benchmarks/bench_precision.py --held-out --tiles 64,96,128   # the tile, on held-out images

A checkpoint's manifest entry gets cpu_defaults (what `magn restore` runs on a CPU when
told nothing) from this: bf16 only where the PSNR change is at most 0.02 dB on every
standard set, and a larger tile only where it stays within 0.01 dB on the images its
training held out (--held-out: a setting is chosen on held-out images, never on a test
set); bench_defaults.py times the result on a quiet machine (README, Performance). Needs the benchmark datasets and
a CPU with native bf16 (or CUDA). Time figures want a quiet machine; PSNR changes do not.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (key, task, channels, sets, one level per set): the standard sets of docs/protocols.md,
# at a middle level (bf16 rounding does not depend much on the level).
CASES = [
    ("denoise-gray", "denoise", 1, ["Set12", "BSD68"], [25]),
    ("denoise-color", "denoise", 3, ["CBSD68", "Kodak24", "McMaster"], [25]),
    ("dejpeg-gray", "dejpeg", 1, ["Classic5", "LIVE1"], [20]),
    ("dejpeg-color", "dejpeg", 3, ["LIVE1", "Kodak24"], [20]),
    ("demosaic", "demosaic", 3, ["McMaster", "Kodak24"], []),
]


# The held-out split of the training sets, as the recipes hold it out (val_holdout).
HELD_OUT = {1: ("Train400", 20), 3: ("CBSD432", 24)}


def held_out_folder(channels: int) -> str:
    """A temporary folder of links to the training images held out from `channels`' data."""
    import os
    import tempfile
    from magncli.training.data import resolve_data_folder, scan_images
    name, count = HELD_OUT[channels]
    _, held = scan_images(resolve_data_folder(name)).split_holdout(count)
    folder = Path(tempfile.mkdtemp()) / f"held-out {name}"         # the set's name in the rows
    folder.mkdir()
    for path in held:
        os.symlink(path.resolve(), folder / path.name)
    return str(folder)


def main() -> None:
    from magncli.evaluate import run_eval
    from magncli.inference import InferenceOptions
    from magncli.weights import select_default

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma list of case keys (default: all)")
    ap.add_argument("--json", default="benchmarks/results/precision.json")
    ap.add_argument("--tiles", default="64", help="comma list: bf16 is scored at each (fp32 at 64 only)")
    ap.add_argument("--held-out", action="store_true",
                    help="score the training images each checkpoint's recipe holds out, not the test sets")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    tiles = [int(t) for t in args.tiles.split(",")]
    rows = []
    for key, task, channels, sets, levels in CASES:
        if only and key not in only:
            continue
        name = select_default(task, channels, levels[0] if levels else None).name
        mode = "gray" if channels == 1 else "color"
        if args.held_out:
            sets = [held_out_folder(channels)]
        fp32_rows = run_eval(task, sets, levels, models=[name], channels=mode,
                             options=InferenceOptions(device="cpu", precision="fp32", tile=64))
        for tile in tiles:
            bf16_rows = run_eval(task, sets, levels, models=[name], channels=mode,
                                 options=InferenceOptions(device="cpu", precision="bf16", tile=tile))
            for fp32, bf16 in zip(fp32_rows, bf16_rows):
                row = {"checkpoint": name, "set": fp32["set"], "level": fp32["level"], "tile_bf16": tile,
                       "psnr_fp32": fp32["psnr"], "psnr_bf16": bf16["psnr"],
                       "delta_db": round(bf16["psnr"] - fp32["psnr"], 4),
                       "s_per_img_fp32": fp32.get("seconds_per_image"),
                       "s_per_img_bf16": bf16.get("seconds_per_image")}
                rows.append(row)
                print(f"{name:32s} {row['set']:9s} {str(row['level']):5s} fp32@64 {row['psnr_fp32']:.4f}  "
                      f"bf16@{tile} {row['psnr_bf16']:.4f}  change {row['delta_db']:+.4f} dB", flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=2) + "\n")
    worst = {}
    for r in rows:
        if r["tile_bf16"] == 64:
            worst[r["checkpoint"]] = max(worst.get(r["checkpoint"], 0.0), abs(r["delta_db"]))
    for name, w in worst.items():
        print(f"{name}: largest |change| {w:.4f} dB -> bf16 {'may' if w <= 0.02 else 'may not'} be its CPU default")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
