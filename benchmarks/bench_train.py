"""Training throughput per architecture: samples/s and pixels/s of one training step
(forward, MSE, backward, Adam) in fp32 and in bf16 autocast + channels_last, as
`magn train` runs them, and the ratio between the two. Also the data pipeline's own
rate (crop + degrade on the fly), so that a slow step is never blamed on the model.

    python benchmarks/bench_train.py                        # the CPU recipe: batch 16, patch 48
    python benchmarks/bench_train.py --archs magn-s,magn-s-local --threads 1 --json out.json
    python benchmarks/bench_train.py --device cuda --batch 32 --patch 64 --archs magn
    python benchmarks/bench_train.py --recipe train/recipes/magn-s-local-denoise-gray.toml \
        --json benchmarks/results/train-threads.json   # real runs at 1 and 2 threads

Each configuration runs in its own process (a fresh allocator and thread pool). Weights
are random: speed does not depend on them. Run it on a quiet machine: two torch
processes on the same cores slow each other several times over. Not part of the tests.
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
sys.path.insert(0, str(REPO))


def measure_step(arch: str, precision: str, layout: str, batch: int, patch: int, steps: int,
                 channels: int, device: str, threads: int, compiled: bool = False) -> dict:
    """Time `steps` training steps (after two warm-up steps) of one configuration."""
    import torch
    import torch.nn.functional as F

    from magncli.devices import resolve_precision
    from magncli.models import build_model

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    amp_dtype = resolve_precision(precision, dev)
    layout = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    model = build_model(arch, in_channels=channels).to(dev, memory_format=layout).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    net = torch.compile(model) if compiled else model
    clean = torch.rand(batch, channels, patch, patch, device=dev)            # (B, C, p, p)
    noisy = (clean + torch.randn_like(clean) * (25 / 255)).contiguous(memory_format=layout)

    def step() -> None:
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype != torch.float32):
            restored = net(noisy)
        loss = F.mse_loss(restored.float(), clean)                             # fp32 loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    compile_start = time.perf_counter()
    for _ in range(2):
        step()
    warmup_s = time.perf_counter() - compile_start
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    samples_per_s = batch * steps / seconds
    return {"arch": arch, "precision": precision, "compiled": compiled, "warmup_s": round(warmup_s, 1),
            "layout": "channels_last" if layout is torch.channels_last else "NCHW",
            "device": device, "batch": batch, "patch": patch, "channels": channels,
            "params": sum(p.numel() for p in model.parameters()), "steps": steps,
            "ms_per_step": round(1000 * seconds / steps, 1), "samples_per_s": round(samples_per_s, 1),
            "pixels_per_s": round(samples_per_s * patch * patch), "threads": torch.get_num_threads()}


def measure_data(data: str, batch: int, patch: int, samples: int, threads: int) -> dict:
    """Samples/s of the data pipeline alone (uint8 images in memory, crop, noise)."""
    import torch

    from magncli.training.config import load_config
    from magncli.training.data import PatchDataset, resolve_data_folder, scan_images

    if threads:
        torch.set_num_threads(threads)
    config = load_config([], dict(task="denoise", data=data, channels=1, sigma_range=[0, 75],
                                  patch=patch, batch=batch))
    dataset = PatchDataset(scan_images(resolve_data_folder(data)).paths, config)
    start = time.perf_counter()
    for i in range(samples):
        dataset[i]
    seconds = time.perf_counter() - start
    return {"data": Path(data).name, "patch": patch, "samples_per_s": round(samples / seconds, 1)}


def measure_recipe(configs: list, steps: int, threads: int) -> dict:
    """Samples/s of a real `magn train` run of the recipe `configs` (data, loss, clipping,
    EMA, logging: everything a step does), over `steps` steps after 100 warm-up steps,
    with no validation or checkpoint inside the timed span."""
    import tempfile
    from dataclasses import replace

    import torch

    from magncli.runs.folder import LOG_FILE, read_log
    from magncli.training.config import load_config
    from magncli.training.lineage import is_lineage_recipe, read_lineage
    from magncli.training.loop import Trainer

    torch.set_num_threads(threads)
    warm = 100
    timing = dict(steps=warm + steps, val_every=10**9, ckpt_every=10**9, log_every=warm, threads=threads)
    if len(configs) == 1 and is_lineage_recipe(REPO / configs[0]):
        # A published checkpoint's recipe: its last stage's settings, from random weights
        # (where the stage starts from does not change the time of a step).
        config = replace(read_lineage(REPO / configs[0]).stages[-1].config, **timing).check()
    else:
        config = load_config([REPO / c for c in configs], timing)
    with tempfile.TemporaryDirectory() as run_dir:
        Trainer(config, Path(run_dir) / "run").run()
        rates = [r["samples_per_s"] for r in read_log(Path(run_dir) / "run" / LOG_FILE)
                 if "samples_per_s" in r and r["step"] > warm]
    return {"recipe": " + ".join(configs), "threads": threads, "steps": steps,
            "samples_per_s": round(sum(rates) / len(rates), 1), "arch": config.arch,
            "compile": config.compile, "precision": config.precision}


def main() -> None:
    sys.path.insert(0, str(REPO))
    from magncli.devices import cpu_description

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="magn-tiny-local,magn-s-local,magn-s")
    ap.add_argument("--settings", default="fp32:NCHW,fp32:channels_last,bf16:channels_last",
                    help="PRECISION:LAYOUT[:compiled] list; the first is the baseline of the speed-up "
                         "column. magn train on a CPU uses channels_last in either precision.")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--steps", type=int, default=10, help="timed steps after two warm-up steps")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--data", default="Train400", help="data pipeline rate on this set ('' to skip)")
    ap.add_argument("--recipe", action="append", default=[], metavar="TOML",
                    help="time real `magn train` runs of this recipe (repeatable: later files override) "
                         "at each of --recipe-threads, instead of the model step alone")
    ap.add_argument("--recipe-threads", default="1,2")
    ap.add_argument("--recipe-steps", type=int, default=400)
    ap.add_argument("--json", default="benchmarks/results/train.json")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.one:
        spec = json.loads(args.one)
        kind = spec.pop("kind")
        measure = {"step": measure_step, "data": measure_data, "recipe": measure_recipe}[kind]
        print(json.dumps(measure(**spec)))
        return

    def child(spec: dict) -> dict:
        res = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True)
        if res.returncode != 0:
            return {**spec, "error": (res.stderr.strip().splitlines() or ["failed"])[-1][:200]}
        return json.loads(res.stdout.strip().splitlines()[-1])

    if args.recipe:
        rows = [child(dict(kind="recipe", configs=args.recipe, steps=args.recipe_steps, threads=int(t)))
                for t in args.recipe_threads.split(",")]
        for row in rows:
            row["speedup"] = round(row["samples_per_s"] / rows[0]["samples_per_s"], 2) if "error" not in row else None
            print(f"{row.get('recipe')}: {row['threads']} thread(s) "
                  f"{row.get('samples_per_s', row.get('error'))} samples/s  x{row['speedup']}", flush=True)
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"python": platform.python_version(), "machine": platform.machine(), "cpu": cpu_description(),
                "command": " ".join(sys.argv)}
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        return

    rows = []
    for arch in args.archs.split(","):
        baseline = None
        for setting in args.settings.split(","):
            precision, layout, *rest = setting.split(":")
            row = child(dict(kind="step", arch=arch, precision=precision, layout=layout, batch=args.batch,
                             patch=args.patch, steps=args.steps, channels=args.channels, device=args.device,
                             threads=args.threads, compiled=rest == ["compiled"]))
            rows.append(row)
            if "error" in row:
                print(f"{arch:16s} {precision:5s} error: {row['error']}", flush=True)
                continue
            baseline = baseline or row
            row["speedup"] = round(row["samples_per_s"] / baseline["samples_per_s"], 2)
            speedup = f"  x{row['speedup']:.2f}"
            print(f"{arch:16s} {precision:5s} {row['layout']:13s}{' compiled' if row['compiled'] else ''} "
                  f"{row['params']:>9,} params "
                  f"{row['ms_per_step']:8.1f} ms/step {row['samples_per_s']:8.1f} samples/s "
                  f"{row['pixels_per_s'] / 1e6:6.2f} Mpx/s{speedup}", flush=True)
    data_row = None
    if args.data:
        data_row = child(dict(kind="data", data=args.data, batch=args.batch, patch=args.patch,
                              samples=400, threads=args.threads))
        print(f"data pipeline ({args.data}, patch {args.patch}, in the training process): "
              f"{data_row.get('samples_per_s', data_row.get('error'))} samples/s", flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "machine": platform.machine(), "cpu": cpu_description(),
                "command": " ".join(sys.argv)}
    out.write_text(json.dumps({"meta": meta, "rows": rows, "data": data_row}, indent=2) + "\n")
    print(f"batch {args.batch}, patch {args.patch}, {args.channels} channel(s), {args.steps} timed steps "
          f"after two warm-up steps, device {args.device}; written to {out}")


if __name__ == "__main__":
    main()
