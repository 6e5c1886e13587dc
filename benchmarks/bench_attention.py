"""Graph-attention backends alone: seconds and peak memory for one graph.

    python benchmarks/bench_attention.py                     # 4 heads x 4096 nodes (a 64x64 tile), d=16
    python benchmarks/bench_attention.py --nodes 16384 --heads 1

Backends: reference (materialised scores), chunked eager, chunked compiled (after its
one-off compile, which is timed separately), sdpa's inference path (the CPU default,
in blocks of --block-mb MiB of scores; q, k, v in --dtype), and flex (compiled, CUDA only).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from magncli import attention  # noqa: E402
from magncli.attention import (chunked_attention, compiled_chunks, flex_attention_backend,  # noqa: E402
                               reference_attention, sdpa_attention)


def timed(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        with torch.no_grad():
            fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1, help="graphs at once (restore batches 4 tiles on the CPU)")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--block-mb", default="", help="comma-separated sizes of sdpa's inference blocks to compare")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    q, k, v = (torch.randn(args.batch, args.heads, args.nodes, args.dim, generator=g).to(args.device, dtype)
               for _ in range(3))
    print(f"{args.batch} x {args.heads} heads x {args.nodes} nodes, d={args.dim}, {args.dtype}, {args.device}, "
          f"{torch.get_num_threads()} threads; best of {args.repeat}")
    print(f"reference          {timed(lambda: reference_attention(q, k, v), args.repeat):8.3f} s")
    print(f"sdpa (inference)   {timed(lambda: sdpa_attention(q, k, v), args.repeat):8.3f} s"
          f"   (blocks of {attention.INFERENCE_BLOCK_BYTES >> 20} MiB)")
    for mb in filter(None, args.block_mb.split(",")):
        attention.INFERENCE_BLOCK_BYTES = int(float(mb) * 2**20)
        print(f"  blocks {mb:>5s} MiB  {timed(lambda: sdpa_attention(q, k, v), args.repeat):8.3f} s")
    print(f"chunked eager      {timed(lambda: chunked_attention(q, k, v), args.repeat):8.3f} s")
    with compiled_chunks(True):
        start = time.perf_counter()
        with torch.no_grad():
            chunked_attention(q, k, v)
        first = time.perf_counter() - start
        print(f"chunked compiled   {timed(lambda: chunked_attention(q, k, v), args.repeat):8.3f} s"
              f"   (first call, with compilation: {first:.1f} s)")
    if args.device.startswith("cuda"):
        print(f"flex (compiled)    {timed(lambda: flex_attention_backend(q, k, v), args.repeat):8.3f} s")


if __name__ == "__main__":
    main()
