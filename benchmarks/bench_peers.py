"""Restore time of the default denoisers against the CNNs a user would run instead
(DnCNN-B, CDnCNN-B, FFDNet; ../shared/peers), in one run, on real photo sizes.

    python benchmarks/bench_peers.py                 # Kodak24's 768x512 and a 12 MP photo
    python benchmarks/bench_peers.py --sizes kodak --peers ../shared/peers --json out.json

Every model runs as `magn restore` runs it (restore_for_task with the engine's defaults:
restore's tile, overlap and precision for each model, a plain CNN's larger tile; the
peers also whole-image, as their authors ran them), on a
noisy sigma-25 photo: Kodak24's kodim01 (768x512), and kodim01 mirrored out to 4000x3000
for the 12 MP size. Gray rows use its BT.601 luma. Each configuration runs in a fresh
subprocess (its peak RSS its own), after one warm-up pass on a 96x96 crop. Run it with
nothing else on the machine: two torch processes at once slow each other several times.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {"kodak": (512, 768), "12mp": (3000, 4000)}
# (label, channels, weights: None for the task's default or a peer file, sigma given, whole image)
# The peers run twice: in the engine's tiles (512, overlapping by 4x their reach, so exact)
# and as their authors' test scripts ran them, the whole image at once.
MODELS = [
    ("magn default gray", 1, None, False, False),
    ("magn default gray, sigma given", 1, None, True, False),
    ("DnCNN-B", 1, "dncnn_gray_blind.pth", False, False),
    ("DnCNN-B, whole image", 1, "dncnn_gray_blind.pth", False, True),
    ("magn default color", 3, None, False, False),
    ("magn default color, sigma given", 3, None, True, False),
    ("FFDNet", 3, "ffdnet_color.pth", True, False),
    ("FFDNet, whole image", 3, "ffdnet_color.pth", True, True),
    ("CDnCNN-B", 3, "dncnn_color_blind.pth", False, False),
    ("CDnCNN-B, whole image", 3, "dncnn_color_blind.pth", False, True),
]


def run_one(label: str, channels: int, weights, sigma_given: bool, whole: bool, size: str, peers: str,
            data: str, threads: int) -> dict:
    """Measure one model at one size in this process (called in a subprocess)."""
    import resource

    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    from magncli import load_model
    from magncli.datasets import load_ground_truth
    from magncli.degrade import add_gaussian_noise
    from magncli.inference import InferenceOptions
    from magncli.tasks import restore_for_task
    from magncli.weights import cpu_defaults_for, resolve_weights

    if threads:
        torch.set_num_threads(threads)
    path = Path(peers) / weights if weights else resolve_weights(None, task="denoise", channels=channels)
    model = load_model(path)
    photo = load_ground_truth(Path(data) / "Kodak24" / "kodim01.png", "gray" if channels == 1 else "color")
    h, w = SIZES[size]
    reps = (-(-h // photo.shape[0]), -(-w // photo.shape[1]))
    tiled = np.concatenate([np.concatenate([photo if (i + j) % 2 == 0 else photo[::-1] for j in range(reps[1])],
                                           axis=1) for i in range(reps[0])], axis=0)[:h, :w]
    noisy = add_gaussian_noise(np.ascontiguousarray(tiled), 25, seed=0)          # (h, w, c)
    level = 25 if sigma_given else None
    # As `magn restore` runs it: a published checkpoint with its measured CPU defaults
    # (precision, tile; weights.cpu_defaults_for), a peer's file with the engine's.
    defaults = {} if whole else cpu_defaults_for(path)
    options = InferenceOptions(tile=-(-max(h, w) // 4) * 4 if whole else defaults.get("tile"),
                               precision=defaults.get("precision", InferenceOptions().precision))
    restore_for_task(model, noisy[:96, :96], "denoise", level=level, options=options)   # warm-up
    start = time.perf_counter()
    restore_for_task(model, noisy, "denoise", level=level, options=options)
    seconds = time.perf_counter() - start
    plan = options.describe(model)
    return {"model": label, "weights": Path(path).name, "channels": channels, "sigma_given": sigma_given,
            "size": f"{w}x{h}", "megapixels": round(h * w / 1e6, 2), "seconds": round(seconds, 2),
            "s_per_mp": round(seconds / (h * w / 1e6), 2), "tile": plan["tile"], "overlap": plan["overlap"],
            "precision": plan["precision"], "threads": torch.get_num_threads(),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    sys.path.insert(0, str(REPO))
    from magncli.devices import cpu_description

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="kodak,12mp", help=f"comma list of {', '.join(SIZES)}")
    ap.add_argument("--peers", default=str(REPO.parent / "shared" / "peers"))
    ap.add_argument("--data", default=os.environ.get("MAGN_DATA") or str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--only", default="", help="row labels to run, separated by ; (default: every row)")
    ap.add_argument("--no-whole-at", default="", help="comma list of sizes where the whole-image rows are "
                                                      "left out (a 12 MP DnCNN pass holds gigabytes)")
    ap.add_argument("--json", default="benchmarks/results/peers.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(**json.loads(args.one))))
        return
    rows = []
    for size in args.sizes.split(","):
        for label, channels, weights, sigma_given, whole in MODELS:
            if (args.only and label not in args.only.split(";")) or (whole and size in args.no_whole_at.split(",")):
                continue
            spec = dict(label=label, channels=channels, weights=weights, sigma_given=sigma_given, whole=whole, size=size,
                        peers=args.peers, data=args.data, threads=args.threads)
            res = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{label} {size}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{row['size']:>9s}  {label:32s} {row['seconds']:8.2f} s {row['s_per_mp']:7.2f} s/MP  "
                  f"tile {row['tile']}/{row['overlap']}  peak RSS {row['peak_rss_mib']:6.0f} MiB", flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "cpu": cpu_description(), "command": " ".join(sys.argv[1:]) or "(defaults)"}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
