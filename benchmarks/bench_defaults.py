"""`magn restore` with its defaults against `--precision fp32 --tile 64` (the engine's settings
before checkpoints had measured CPU defaults), end to end on a folder of photos: the time
of each, in turn, in fresh processes. Wants a quiet machine.

    python benchmarks/bench_defaults.py --set Kodak24 --task denoise --level 25
    python benchmarks/bench_defaults.py --set Kodak24 --task dejpeg --level 20 --rounds 2
    python benchmarks/bench_defaults.py --task denoise --settings "bf16 64=--precision bf16 --tile 64;bf16 96=--precision bf16 --tile 96"

The inputs are made once with `magn degrade` (the protocol's) in a temporary folder; each
round restores them all with each setting into a new folder. Prints seconds per round and
the speed-up of the defaults, and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"fp32 tile 64": ["--precision", "fp32", "--tile", "64"], "defaults": []}


def magn(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "magncli", *args], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    sys.path.insert(0, str(REPO))
    from magncli.devices import cpu_description

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="Kodak24", help="a test set's folder name under the data root")
    ap.add_argument("--data-root", default=os.environ.get("MAGN_DATA", str(REPO.parent / "shared" / "datasets")))
    ap.add_argument("--task", default="denoise")
    ap.add_argument("--level", default="25", help="sigma (denoise) or quality (dejpeg); none for demosaic")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--settings", default="", help="NAME=FLAGS;... to time instead (default: the defaults "
                                                   "against --precision fp32 --tile 64)")
    ap.add_argument("--images", type=int, default=0, help="the first N images of the set (0: all)")
    ap.add_argument("--json", default="benchmarks/results/defaults.json")
    args = ap.parse_args()
    settings = ({name: flags.split() for name, _, flags in (s.partition("=") for s in args.settings.split(";"))}
                if args.settings else SETTINGS)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs"
        source = Path(args.data_root) / args.set
        if args.images:
            chosen = Path(tmp) / "chosen"
            chosen.mkdir()
            for path in sorted(p for p in source.iterdir() if p.is_file())[:args.images]:
                os.symlink(path, chosen / path.name)
            source = chosen
        level = {"denoise": ["--sigma", args.level], "dejpeg": ["--quality", args.level],
                 "demosaic": []}[args.task]
        extra = ["--format", "jpg"] if args.task == "dejpeg" else []
        magn("degrade", "-t", args.task, *level, *extra, "-o", str(inputs), str(source))
        seconds = {name: [] for name in settings}
        for round_ in range(args.rounds):
            for name, flags in settings.items():
                out = Path(tmp) / f"out-{round_}-{name.replace(' ', '-')}"
                start = time.perf_counter()
                magn("restore", "-t", args.task, str(inputs), "-o", str(out), "-q", *flags)
                seconds[name].append(time.perf_counter() - start)
                print(f"round {round_ + 1}: {name:14s} {seconds[name][-1]:7.1f} s", flush=True)
    best = {name: min(times) for name, times in seconds.items()}
    first = next(iter(best))
    speedup = {name: round(best[name] / best[first], 3) for name in best}      # time relative to the first
    print(f"{args.set} {args.task}: " + ", ".join(f"{name} {t:.1f} s ({best[first] / t:.2f}x of {first}'s speed)"
                                                  for name, t in best.items()))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "set": args.set, "task": args.task,
                               "level": args.level, "seconds": seconds, "time_relative_to_first": speedup,
                               "machine": cpu_description(),
                               "threads": os.environ.get("OMP_NUM_THREADS", "torch default")}, indent=1) + "\n")


if __name__ == "__main__":
    main()
