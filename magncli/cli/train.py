"""`magn train`: train a model from a recipe (train/*.toml) and command-line overrides.

Runs under torchrun too (`torchrun --nproc_per_node=N -m magncli train ...`): DDP, with
rank 0 writing the run folder and showing progress.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import List, Optional

import typer

from magncli.cli.app import app
from magncli.cli.common import command_line, console
from magncli.errors import MagnError


def _numbers(text: Optional[str], option: str, kind=float) -> Optional[List]:
    """"0,55" -> [0.0, 55.0]; None stays None."""
    if text is None:
        return None
    try:
        return [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MagnError(f"{option} takes comma-separated numbers, got {text!r}") from None


@app.command("train")
def train_command(
    task: Optional[str] = typer.Option(None, "--task", help="denoise | dejpeg | demosaic (or from --config)."),
    data: Optional[str] = typer.Option(
        None, "--data", help="Folder of clean training images (or a folder name under the data root)."),
    val: Optional[str] = typer.Option(None, "--val", help="Validation folder or test-set name."),
    configs: List[Path] = typer.Option(
        [], "--config", help="Recipe TOML (repeatable: later files override earlier ones)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: runs/RECIPE-TIME)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture: magn, a variant (magn-s, magn-s-local, magn-light, magn-tiny-local), dagl or panet."),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 (gray) or 3 (color)."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Global batch size (split over DDP ranks)."),
    patch: Optional[int] = typer.Option(None, "--patch", help="Training patch size (multiple of 4)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Total optimizer steps."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate."),
    sigma: Optional[float] = typer.Option(None, "--sigma", help="denoise: one noise level (0-255)."),
    sigma_range: Optional[str] = typer.Option(None, "--sigma-range", help="denoise, blind: LO,HI (e.g. 0,55)."),
    qualities: Optional[str] = typer.Option(None, "--qualities", help="dejpeg: a list of qualities, e.g. 10,20,30,40."),
    quality_range: Optional[str] = typer.Option(None, "--quality-range", help="dejpeg: LO,HI (e.g. 10,40)."),
    pattern: Optional[str] = typer.Option(None, "--pattern", help="demosaic: grbg | rggb | gbrg | bggr | random."),
    val_every: Optional[int] = typer.Option(None, "--val-every", help="Validate every N steps."),
    ckpt_every: Optional[int] = typer.Option(None, "--ckpt-every", help="Checkpoint every N steps."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Data loader processes per rank."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 (CUDA, or a CPU with native bf16) | fp16 (CUDA)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the weights and the data."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: one per core). "
                                          "1 for a long run beside other work."),
    init_from: Optional[str] = typer.Option(
        None, "--init-from", help="Warm start: begin from these weights (a file or a published name) "
                                  "with a fresh optimizer; recorded in the provenance."),
    for_cpu_hours: Optional[float] = typer.Option(
        None, "--for-cpu-hours", help="Stop (with a checkpoint) after this many CPU-hours of training; "
                                      "--resume continues."),
    export_only: bool = typer.Option(
        False, "--export", help="With --resume: write RUNDIR/export.safetensors from the last checkpoint "
                                "and exit, without training (publish while a long run goes on)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a restoration model; writes checkpoints, log.jsonl, curves.png and export.safetensors."""
    from magncli.training.config import load_config
    from magncli.training.loop import Trainer
    from magncli.training.runstate import EXPORT_FILE, load_run_config

    overrides = dict(task=task, data=data, val=val, arch=arch, channels=channels, batch=batch,
                     patch=patch, steps=steps, lr=lr, sigma=sigma,
                     sigma_range=_numbers(sigma_range, "--sigma-range"),
                     qualities=_numbers(qualities, "--qualities", int),
                     quality_range=_numbers(quality_range, "--quality-range", int),
                     pattern=pattern, val_every=val_every, ckpt_every=ckpt_every, workers=workers,
                     device=device, precision=precision, seed=seed, threads=threads,
                     init_from=init_from)
    if resume:
        if out is None:
            raise MagnError("--resume needs --out RUNDIR (the run folder to continue)")
        if configs:
            raise MagnError("--resume continues with RUNDIR/config.toml; drop --config")
        config = load_run_config(out, overrides)
        if export_only:
            trainer = Trainer(config, out, resume=True, record_session=False)
            path = trainer.export()
            console.print(f"exported step {trainer.step} of {config.steps} to {path}", highlight=False)
            return
    else:
        if export_only:
            raise MagnError("--export writes the export of an existing run: give --resume --out RUNDIR")
        if not configs and task is None:
            raise MagnError("give --config RECIPE (see train/) or at least --task and --data")
        config = load_config(configs, overrides)
        if out is None:
            name = configs[-1].stem if configs else config.task
            out = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"

    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 alone reports
    with _progress(quiet or not is_main) as progress:
        bar = progress.add_task("training", total=config.steps, info="")

        def report(p: dict) -> None:
            info = f"loss {p['loss']:.2e}  {p['samples_per_s']:.1f} samples/s"
            if p["val_psnr"] is not None:
                info += f"  val {p['val_psnr']:.2f} dB"
            progress.update(bar, completed=p["step"], info=info)

        trainer = Trainer(config, out, resume=resume, reporter=report,
                          command=command_line())
        progress.update(bar, completed=trainer.step)
        summary = trainer.run(cpu_hours=for_cpu_hours)
        trainer.close()
    if is_main and not quiet:
        best = summary["best_val_psnr"]
        console.print(f"trained {summary['step']} steps ({summary['elapsed_s'] / 60:.1f} min) into {out}"
                      + (f"; best validation PSNR {best:.2f} dB" if math.isfinite(best) else "")
                      + f"; export: {Path(out) / EXPORT_FILE}", highlight=False)


def _progress(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, disable=quiet, transient=True)
