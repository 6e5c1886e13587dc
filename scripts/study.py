"""The equal-budget variant study: validation PSNR of several training runs compared at
equal CPU time, with each variant's size and speed, as a markdown table and a PNG.

    python scripts/study.py ~/magn-runs/study-magn-s ~/magn-runs/study-magn-s-local \
        --minutes 15,30,45 --train-bench benchmarks/results/train.json \
        --restore-bench benchmarks/results/inference.json --png docs/study.png
    python scripts/study.py ~/magn-runs/denoise-gray-global ~/magn-runs/denoise-gray-local2 \
        --own --minutes 30,60,90,110 --steps 10000,20000,30000,40000,50000 --png docs/global-study.png

--own counts each run's own CPU time (a warm-started run's log counts its start's too);
--steps adds a table, and a panel, at equal steps.

Each run's log.jsonl gives (CPU seconds, validation PSNR) points; the PSNR at a given
CPU time is interpolated linearly between the two validations around it (empty past the
run's last validation). MACs per pixel count convolutions, linear layers and both
graphs' products (reference attention) on a 64 px tile, as restore runs it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from magncli.models import build_model  # noqa: E402
from magncli.runs.curves import draw_validation_series, validation_points, write_png  # noqa: E402
from magncli.runs.folder import CONFIG_FILE, LOG_FILE, first_warm_start, read_log  # noqa: E402
from magncli.training.config import read_recipe  # noqa: E402


def psnr_at(points: List[Tuple[float, float]], hours: float) -> Optional[float]:
    """Validation PSNR at `hours` CPU-hours, interpolated; None outside the run."""
    xs = [x for x, _ in points]
    if not points or hours > xs[-1] or hours < xs[0]:
        return None
    return float(np.interp(hours, xs, [v for _, v in points]))


def macs_per_pixel(arch: str, channels: int, tile: int = 64, **config) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    model = build_model(arch, in_channels=channels, **config).eval()
    model.set_attention_backend("reference")   # the graph products as plain matmuls
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.rand(1, channels + bool(config.get("level_input")), tile, tile))
    return counter.get_total_flops() / 2 / (tile * tile)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--minutes", default="15,30,45")
    ap.add_argument("--train-bench", type=Path, help="bench_train.py JSON (training pixels/s)")
    ap.add_argument("--restore-bench", type=Path, help="bench_inference.py JSON (restore s/MP)")
    ap.add_argument("--restore-size", type=int, default=1024)
    ap.add_argument("--own", action="store_true", help="each run's own CPU time, not its warm start's")
    ap.add_argument("--steps", default="", help="comma list: also a table and a panel at equal steps")
    ap.add_argument("--png", type=Path)
    args = ap.parse_args()
    minutes = [float(m) for m in args.minutes.split(",")]
    steps = [int(s) for s in args.steps.split(",") if s]

    train_rows = json.loads(args.train_bench.read_text())["rows"] if args.train_bench else []
    restore_rows = json.loads(args.restore_bench.read_text())["rows"] if args.restore_bench else []

    def train_px(arch: str, precision: str) -> str:
        rows = [r for r in train_rows if r.get("arch") == arch and r.get("precision") == precision
                and r.get("layout") == "channels_last" and not r.get("compiled")]
        return f"{rows[0]['pixels_per_s'] / 1e3:.0f}k" if rows else "-"

    def restore_spmp(arch: str, precision: str) -> str:
        rows = [r for r in restore_rows if r.get("arch") == arch and r.get("precision") == precision
                and r.get("size") == args.restore_size]
        return f"{rows[0]['s_per_mp']:.2f}" if rows else "-"

    header = (["variant", "params", "MACs/px", "train px/s fp32", "train px/s bf16"]
              + [f"val PSNR @ {m:g} CPU-min" for m in minutes]
              + ["CPU-min run", "restore s/MP fp32", "restore s/MP bf16"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    series, step_series = [], []
    for run in args.runs:
        config = read_recipe(run / CONFIG_FILE)
        arch, channels, model_config = config["arch"], int(config.get("channels", 1)), config.get("model", {})
        records = read_log(run / LOG_FILE)
        points = validation_points(records)
        if args.own:
            warm_start = first_warm_start({"sessions": records})     # the log's start/resume events
            inherited = ((warm_start or {}).get("cpu_s") or 0.0) / 3600
            points = [(hours - inherited, value) for hours, value in points]
        series.append((arch, points))
        step_series.append((arch, [(r["step"], r["val_psnr"]) for r in records if "val_psnr" in r]))
        params = sum(p.numel() for p in build_model(arch, in_channels=channels, **model_config).parameters())
        cells = [f"`{arch}`", f"{params / 1e3:.0f}k",
                 f"{macs_per_pixel(arch, channels, **model_config) / 1e3:.0f}k",
                 train_px(arch, "fp32"), train_px(arch, "bf16")]
        for m in minutes:
            value = psnr_at(points, m / 60)
            cells.append(f"{value:.3f}" if value is not None else "-")
        cells += [f"{points[-1][0] * 60:.0f}" if points else "-",
                  restore_spmp(arch, "fp32"), restore_spmp(arch, "bf16")]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if steps:
        print()
        print("| variant | " + " | ".join(f"val PSNR @ step {s}" for s in steps) + " |")
        print("|---|" + "---|" * len(steps))
        for arch, points in step_series:
            values = [psnr_at(points, s) for s in steps]
            print(f"| `{arch}` | " + " | ".join("-" if v is None else f"{v:.3f}" for v in values) + " |")
    if args.png:
        hours = "own training CPU-hours" if args.own else "training CPU-hours"
        panels = [draw_validation_series(series, f"validation PSNR (dB) against {hours}")]
        if steps:
            panels.append(draw_validation_series(step_series, "validation PSNR (dB) against steps", "step"))
        write_png(args.png, np.vstack(panels))
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
