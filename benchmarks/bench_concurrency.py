"""Several `magn restore` processes at once against one process doing all the work.

    python benchmarks/bench_concurrency.py                        # 4 Kodak24 images, 2 at once
    python benchmarks/bench_concurrency.py --active               # also (b) with OMP_WAIT_POLICY=ACTIVE
    python benchmarks/bench_concurrency.py --images 8 --parallel 4
    python benchmarks/bench_concurrency.py --synthetic 64x64 --images 2 --json /tmp/smoke.json   # smoke test

Configurations, each restoring the same K images (`--task denoise`, the shipped default
weights, `-o` a temporary folder, `--overwrite`, `--quiet`):

    (a) one process on all K images
    (b) P processes started together, each on K/P of them (people scripting over folders:
        `xargs -P`, or several shells)
    (c) one process with `--jobs P`
    (a, ACTIVE), (b, ACTIVE) with --active: (a) and (b) with OMP_WAIT_POLICY=ACTIVE forced,
        how magn ran before it chose a passive wait policy itself ((a, ACTIVE) against (a):
        what the passive policy costs a process alone)

Wall seconds run from starting the first process to the end of the last, so they include
starting Python and torch, as a user waits for them. Reports each and its ratio to (a)
(issue 18's goal: (b)/(a) <= 1.25), prints a table and writes JSON. The images are K
copies of one Kodak24 photo (768x512) from ../shared/datasets (or $MAGN_DATA) when it is
there, else synthetic ones (--synthetic HxW, default 512x768). The children get this
environment without OMP_WAIT_POLICY (magn's default is measured), except in (b, ACTIVE).
Run it on a quiet machine; this script does not import torch or magncli itself.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KODAK_PHOTO = "kodim01.png"


def data_root() -> Path:
    env = os.environ.get("MAGN_DATA")
    return Path(env) if env else REPO.parent / "shared" / "datasets"


def make_images(folder: Path, count: int, synthetic: str | None) -> dict:
    """`count` images in `folder`; returns what they are, for the results."""
    folder.mkdir(parents=True)
    photo = data_root() / "Kodak24" / KODAK_PHOTO
    if synthetic is None and photo.is_file():
        for i in range(count):
            shutil.copyfile(photo, folder / f"{i:02d}_{KODAK_PHOTO}")
        return {"source": f"Kodak24/{KODAK_PHOTO}", "width": 768, "height": 512, "count": count}
    import numpy as np
    from PIL import Image as PILImage
    h, w = (int(v) for v in (synthetic or "512x768").lower().split("x"))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(count):
        base = np.stack([np.sin(xx / (17 + i)) + np.cos(yy / 23), np.sin((xx + yy) / 31), np.cos(xx / 11)], -1)
        noisy = 0.5 + 0.2 * base + 0.1 * rng.standard_normal((h, w, 3))
        PILImage.fromarray((np.clip(noisy, 0, 1) * 255).round().astype(np.uint8)).save(folder / f"{i:02d}.png")
    return {"source": "synthetic", "width": w, "height": h, "count": count}


def child_env(policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    return env


def restore_command(files, out: Path, jobs: int = 1) -> list:
    return [sys.executable, "-m", "magncli", "restore", *map(str, files), "--task", "denoise",
            "-o", str(out), "--overwrite", "--quiet", "--jobs", str(jobs)]


def run_together(commands, env) -> dict:
    """Start every command at once; wall seconds until the last one ends."""
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    ends, failures = [], []
    for proc in procs:
        out, err = proc.communicate()
        ends.append(round(time.perf_counter() - start, 3))
        if proc.returncode:
            failures.append(f"exit {proc.returncode}: {err.strip()[-2000:]}")
    return {"wall_s": round(time.perf_counter() - start, 3), "process_ends_s": ends, "failures": failures}


def split(files, parts: int):
    return [files[i::parts] for i in range(parts)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=4, help="K: images restored by every configuration")
    ap.add_argument("--parallel", type=int, default=2, help="P: processes in (b), --jobs in (c)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each configuration (the median is reported)")
    ap.add_argument("--active", action="store_true", help="also run (a) and (b) with OMP_WAIT_POLICY=ACTIVE")
    ap.add_argument("--synthetic", metavar="HxW", help="synthetic images of this size instead of Kodak24")
    ap.add_argument("--no-warmup", action="store_true", help="skip the untimed first restore (file cache, weights)")
    ap.add_argument("--json", default="benchmarks/results/concurrency.json")
    args = ap.parse_args()
    if args.images < args.parallel or args.parallel < 1:
        ap.error("need --images >= --parallel >= 1")

    with tempfile.TemporaryDirectory(prefix="magn-bench-") as tmp:
        tmp = Path(tmp)
        images = make_images(tmp / "in", args.images, args.synthetic)
        files = sorted((tmp / "in").iterdir())
        env = child_env(None)
        if not args.no_warmup:
            warm = run_together([restore_command(files[:1], tmp / "warmup")], env)
            if warm["failures"]:
                print("\n".join(warm["failures"]), file=sys.stderr)
                return 1
        p = args.parallel
        configs = [("a", f"1 process, {len(files)} images", [restore_command(files, tmp / "a")], env),
                   ("b", f"{p} processes at once, {len(files) / p:g} images each",
                    [restore_command(part, tmp / "b") for part in split(files, p)], env),
                   ("c", f"1 process --jobs {p}, {len(files)} images",
                    [restore_command(files, tmp / "c", jobs=p)], env)]
        if args.active:
            configs.append(("a_active", f"1 process, {len(files)} images, OMP_WAIT_POLICY=ACTIVE",
                            [restore_command(files, tmp / "a_active")], child_env("ACTIVE")))
            configs.append(("b_active", f"{p} processes at once, OMP_WAIT_POLICY=ACTIVE",
                            [restore_command(part, tmp / "b_active") for part in split(files, p)],
                            child_env("ACTIVE")))
        rows = []
        for key, label, commands, config_env in configs:
            runs = []
            for _ in range(args.repeat):
                result = run_together(commands, config_env)
                if result["failures"]:
                    print(f"({key}) failed:\n" + "\n".join(result["failures"]), file=sys.stderr)
                    return 1
                runs.append(result)
            rows.append({"config": key, "label": label, "processes": len(commands),
                         "wall_s": statistics.median(r["wall_s"] for r in runs), "runs": runs})

    base = rows[0]["wall_s"]
    for row in rows:
        row["ratio_to_a"] = round(row["wall_s"] / base, 3) if base else None
    print(f"{'config':<10} {'':<44} {'wall s':>8} {'/ (a)':>7}")
    for row in rows:
        print(f"{row['config']:<10} {row['label']:<44} {row['wall_s']:>8.2f} {row['ratio_to_a']:>7.2f}")
    goal = next(r["ratio_to_a"] for r in rows if r["config"] == "b")
    print(f"goal (b)/(a) <= 1.25: {'met' if goal <= 1.25 else 'NOT met'} ({goal:.2f})")

    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "torch": _version("torch"), "command": " ".join([_relative(sys.argv[0]), *sys.argv[1:]]),
            "images": images, "parallel": args.parallel, "repeat": args.repeat,
            "environment": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _relative(path: str) -> str:
    """The script as run from the checkout (no absolute path of this machine in results)."""
    try:
        return Path(path).resolve().relative_to(REPO).as_posix()
    except ValueError:
        return Path(path).name


def _version(package: str):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
