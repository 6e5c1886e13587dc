"""Inference speed and peak memory of `restore` (the tiled engine) per size, backend, model.

    python benchmarks/bench_inference.py                          # restore's CPU defaults
    python benchmarks/bench_inference.py --precisions fp32,bf16 --archs magn-s,magn-s-local
    python benchmarks/bench_inference.py --sizes 256,512,1024,2048 --archs magn,magn-light,dagl,panet
    python benchmarks/bench_inference.py --device cuda --precisions bf16 --backends flex,chunked
    python benchmarks/bench_inference.py --archs magn-s-local --set n_resblocks=6  # a deepened file
    python benchmarks/bench_inference.py --archs magn-s,magn-s-local --tile 64,96,128 --precisions bf16

Each configuration runs in a fresh subprocess so that its peak RSS is its own. Weights are
random (speed and memory do not depend on them). Prints a table and writes JSON.
Megapixels per second counts image pixels (not the tiles' overlap); peak memory should be
flat in image size, since only tiles go through the model.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(arch: str, size: int, backend: str, device: str, precision: str, tile, channels: int,
            threads: int, tile_batch=None, config=None, task=None) -> dict:
    """Measure one configuration in this process (called in a subprocess)."""
    import resource

    import numpy as np
    import torch

    sys.path.insert(0, str(REPO))
    from magncli.api import restore_for_task
    from magncli.inference import InferenceOptions, restore_array
    from magncli.models import build_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    overrides = {"in_channels": channels, **(config or {})}
    model = build_model(arch, **overrides).eval()
    image = np.random.default_rng(0).random((size, size, channels), dtype=np.float32)
    options = InferenceOptions(device=device, precision=precision, tile=tile, backend=backend or None,
                               tile_batch=tile_batch)
    # Decide compilation as the engine would for the whole image (only the chunked
    # backend compiles), then warm up on one tile with that decision, so that a one-off
    # compile is timed apart from the run.
    from magncli.inference import plan_tiles
    options.compile = plan_tiles(model, options).compiles(size, size)
    # With a task, the task's view of the image: a model with a level map runs blind.
    restore = (lambda m, img, opts: restore_for_task(m, img, task, options=opts)) if task else restore_array
    warm = time.perf_counter()
    restore(model, image[:64, :64], options)
    warm_seconds = time.perf_counter() - warm
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    restore(model, image, options)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    row = {"arch": arch, "size": size, "backend": backend or "auto", "device": device,
           "precision": precision, "tile": options.describe()["tile"], "overlap": options.overlap,
           "tile_batch": tile_batch, "config": config or {},
           "channels": channels, "seconds": round(seconds, 3), "compiled": options.compile,
           "warmup_seconds": round(warm_seconds, 2),
           "mp_per_s": round(size * size / 1e6 / seconds, 5),
           "s_per_mp": round(seconds / (size * size / 1e6), 2),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "rss_before_mib": round(rss_before, 1),
           "threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        row["cuda_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return row


def main() -> None:
    sys.path.insert(0, str(REPO))
    from magncli.devices import cpu_description

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,512,1024")
    ap.add_argument("--archs", default="magn-s,magn-s-local,magn-tiny-local")
    ap.add_argument("--backends", default="", help="comma list; '' = automatic per device (restore's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", default="fp32", help="comma list: fp32, bf16, fp16")
    ap.add_argument("--tile", default=None, help="tile size, or a comma list of them (default: the engine's)")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--task", default=None, help="run the model as this task's models run (needed with level_input)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--tile-batch", type=int, default=None, help="tiles per forward pass (default: the engine's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="model config override for every arch (repeatable), e.g. n_resblocks=6")
    ap.add_argument("--json", default="benchmarks/results/inference.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        print(json.dumps(run_one(**json.loads(args.one))))
        return

    config = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            config[key] = json.loads(value)        # numbers and booleans; else the string
        except json.JSONDecodeError:
            config[key] = value
    tiles = [int(t) for t in args.tile.split(",")] if args.tile else [None]
    rows = []
    for arch, tile in ((a, t) for a in args.archs.split(",") for t in tiles):
        for precision in args.precisions.split(","):
            for backend in args.backends.split(","):
                for size in map(int, args.sizes.split(",")):
                    spec = dict(arch=arch, size=size, backend=backend, device=args.device,
                                precision=precision, tile=tile, channels=args.channels,
                                threads=args.threads, tile_batch=args.tile_batch, config=config, task=args.task)
                    res = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)],
                                         capture_output=True, text=True)
                    if res.returncode != 0:
                        print(f"{arch} {size} {backend}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
                        continue
                    row = json.loads(res.stdout.strip().splitlines()[-1])
                    rows.append(row)
                    print(f"{arch:16s} {precision:5s} {backend or 'auto':9s} {size:5d}^2 tile {row['tile']!s:4s} "
                          f"compiled={row['compiled']!s:5s} "
                          f"{row['seconds']:9.2f} s {row['s_per_mp']:7.2f} s/MP "
                          f"{row['mp_per_s']:.4f} MP/s  peak RSS {row['peak_rss_mib']:7.0f} MiB"
                          + (f"  CUDA peak {row['cuda_peak_mib']:.0f} MiB" if "cuda_peak_mib" in row else ""),
                          flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(),
            "cpu": cpu_description(), "command": " ".join(sys.argv)}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
