"""Training throughput: samples per second and peak memory of one training step
(forward, MSE, backward, Adam) per architecture and attention backend.

    python benchmarks/bench_train.py                       # defaults for this machine
    python benchmarks/bench_train.py --batch 2 --steps 3 --json bench_train.json

Defaults follow the paper: patch 64, batch 32 on CUDA. On a CPU, batch 32 of the default
MAGN takes minutes per step, so the default batch there is 2 (say so when quoting).
Each configuration runs in its own process, so peak memory is that configuration's:
on CUDA torch.cuda.max_memory_allocated, on a CPU the process's peak resident memory
(ru_maxrss, which includes ~0.3-0.5 GiB of torch itself; `rss_before_mb` is the baseline
measured just before the first step). Backends: chunked and reference everywhere, flex on
CUDA only (its backward needs the fused kernel). magn-light runs with the default backend.
Not part of the test suite.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_one(arch: str, backend: str, batch: int, patch: int, steps: int, channels: int,
                device: str) -> dict:
    """Train `steps` steps (after one warm-up step) and time them."""
    import torch
    import torch.nn.functional as F

    from magncli.models import build_model

    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(arch, in_channels=channels).to(dev).train()
    model.set_attention_backend(backend)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    clean = torch.rand(batch, channels, patch, patch, device=dev)            # (B, C, p, p)
    noisy = clean + torch.randn_like(clean) * (25 / 255)

    def step() -> None:
        loss = F.mse_loss(model(noisy), clean)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rss_before = _rss_mb()
    step()  # warm-up: allocations, kernel selection, compilation
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if dev.type == "cuda" else _rss_mb()
    return {"arch": arch, "backend": backend, "device": device, "batch": batch, "patch": patch,
            "channels": channels, "steps": steps, "params": sum(p.numel() for p in model.parameters()),
            "seconds_per_step": seconds / steps, "samples_per_s": batch * steps / seconds,
            "peak_mem_mb": peak, "rss_before_mb": rss_before if dev.type != "cuda" else None,
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def main() -> None:
    import torch

    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 32 on CUDA, 2 on a CPU")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 CUDA, 2 CPU)")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--json", default="bench_train.json", help="results file")
    parser.add_argument("--one", nargs=2, metavar=("ARCH", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    on_cuda = args.device.startswith("cuda")
    batch = args.batch or (32 if on_cuda else 2)
    steps = args.steps or (10 if on_cuda else 2)

    if args.one:  # child process: one configuration, one JSON line
        print(json.dumps(measure_one(args.one[0], args.one[1], batch, args.patch, steps,
                                     args.channels, args.device)))
        return

    backends = ["chunked", "reference"] + (["flex"] if on_cuda else [])
    configs = [("magn", b) for b in backends] + [("magn-light", "flex" if on_cuda else "chunked")]
    rows = []
    for arch, backend in configs:
        cmd = [sys.executable, __file__, "--one", arch, backend, "--device", args.device,
               "--batch", str(batch), "--patch", str(args.patch), "--steps", str(steps),
               "--channels", str(args.channels)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["failed"])[-1]
            rows.append({"arch": arch, "backend": backend, "error": last[:200]})
        else:
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(_format(rows[-1]), flush=True)
    Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nbatch {batch}, patch {args.patch}, {args.channels} channels, {steps} timed steps "
          f"after one warm-up, device {args.device}; written to {args.json}")


def _format(row: dict) -> str:
    if "error" in row:
        return f"{row['arch']:<11} {row['backend']:<10} error: {row['error']}"
    return (f"{row['arch']:<11} {row['backend']:<10} {row['params']:>9,} params  "
            f"{row['seconds_per_step']:8.2f} s/step  {row['samples_per_s']:8.3f} samples/s  "
            f"peak {row['peak_mem_mb']:8.0f} MiB")


if __name__ == "__main__":
    main()
