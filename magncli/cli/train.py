"""`magn train`: train a model from a recipe (train/*.toml) and command-line overrides.

Runs under torchrun too (`torchrun --nproc_per_node=N -m magncli train ...`): DDP, with
rank 0 writing the run folder and showing progress.
"""
from __future__ import annotations

import math
import os
from dataclasses import fields
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from magncli.cli.common import Terminated, comma_numbers, command_line, console, note
from magncli.errors import MagnError
from magncli.tasks import TASKS

app = typer.Typer()


@app.command("train")
def train_command(
    task: Annotated[Optional[str], typer.Option(
        "--task", "-t", help="The task (or from --config): " + " | ".join(TASKS) + " (default denoise).")] = None,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="Folder of clean training images (or a folder name under the data root).")] = None,
    val: Annotated[Optional[str], typer.Option(
        "--val", help="Validation folder or test-set name (default: a tenth of --data, 2-20 images, held out).")] = None,
    configs: Annotated[List[Path], typer.Option(
        "--config", help="Recipe TOML (repeatable: later files override earlier ones).")] = [],  # noqa: B006
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Run folder (default: runs/RECIPE-TIME).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    arch: Annotated[Optional[str], typer.Option(
        "--arch", help="Architecture: magn, a variant (magn-s, magn-s-local, magn-light, "
                       "magn-tiny-local), dagl or panet (default magn-s-local / magn).")] = None,
    channels: Annotated[Optional[int], typer.Option(
        "--channels", help="1 (gray) or 3 (color) (default: as the data, color if any image is).")] = None,
    batch: Annotated[Optional[int], typer.Option(
        "--batch", help="Global batch size, split over DDP ranks (default 16 / 32).")] = None,
    patch: Annotated[Optional[int], typer.Option(
        "--patch", help="Training patch size, a multiple of 4 (default 48 / 64).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Total optimizer steps (default 30000 / 300000).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Adam's peak learning rate (default 1e-3 / 1e-4).")] = None,
    sigma: Annotated[Optional[float], typer.Option("--sigma", help="denoise: one noise level (0-255).")] = None,
    sigma_range: Annotated[Optional[str], typer.Option(
        "--sigma-range", help="denoise, blind: LO,HI (e.g. 0,55).")] = None,
    qualities: Annotated[Optional[str], typer.Option(
        "--qualities", help="dejpeg: a list of qualities, e.g. 10,20,30,40.")] = None,
    quality_range: Annotated[Optional[str], typer.Option(
        "--quality-range", help="dejpeg: LO,HI (e.g. 10,40).")] = None,
    pattern: Annotated[Optional[str], typer.Option(
        "--pattern", help="demosaic: grbg | rggb | gbrg | bggr | random.")] = None,
    val_every: Annotated[Optional[int], typer.Option(
        "--val-every", help="Validate every N steps (default 1000 / 5000).")] = None,
    ckpt_every: Annotated[Optional[int], typer.Option(
        "--ckpt-every", help="Checkpoint every N steps (default 1000).")] = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", help="Data loader processes per rank (default 0: in the training process / 4).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto (the default), cpu, cuda, cuda:N.")] = None,
    precision: Annotated[Optional[str], typer.Option(
        "--precision", help="fp32 | bf16 (CUDA, or a CPU with native bf16) | fp16 (CUDA) "
                            "(default bf16 where the CPU has it natively, else fp32 / fp32).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the weights and the data (default 0).")] = None,
    compile_step: Annotated[Optional[bool], typer.Option(
        "--compile/--no-compile", help="torch.compile the training forward (faster after a one-off "
                                       "compile; may change on --resume; default off).")] = None,
    threads: Annotated[Optional[str], typer.Option(
        "--threads", help="torch threads, or auto (the default): every core nothing else keeps busy, "
                          "one fewer while something else runs.")] = None,
    init_from: Annotated[Optional[str], typer.Option(
        "--init-from", help="Warm start: begin from these weights (a file or a published name) with a "
                            "fresh optimizer; recorded in the provenance.")] = None,
    for_cpu_hours: Annotated[Optional[float], typer.Option(
        "--for-cpu-hours", help="Stop (with a checkpoint) after this many CPU-hours of training; "
                                "--resume continues.")] = None,
    export_only: Annotated[bool, typer.Option(
        "--export", help="With --resume: write RUNDIR/export.safetensors from the last checkpoint and "
                         "exit, without training (publish while a long run goes on).")] = False,
    recipe: Annotated[Optional[str], typer.Option(
        "--recipe", help="Replay how a published checkpoint was made, every stage (train/recipes/NAME.toml, "
                         "or a file) into --out; run it again to continue.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a restoration model; writes checkpoints, log.jsonl, curves.png and export.safetensors.

    Defaults shown as A / B: A on a machine without a GPU (the settings the published
    checkpoints trained with), B with one (the paper's). A --config recipe's values
    replace both; an option given here replaces the recipe's."""
    from magncli.training.config import TrainConfig, load_config
    from magncli.training.loop import Trainer
    from magncli.training.plain_run import warnings_for
    from magncli.runs.folder import EXPORT_FILE, load_run_config

    # Every option named after a TrainConfig field sets that field; the few that need
    # parsing first (lists, "auto") are converted here.
    given = dict(locals())
    given.update(sigma_range=comma_numbers(sigma_range, "--sigma-range", float),
                 qualities=comma_numbers(qualities, "--qualities", int),
                 quality_range=comma_numbers(quality_range, "--quality-range", int),
                 threads=_threads(threads), compile=compile_step)
    overrides = {f.name: given[f.name] for f in fields(TrainConfig) if f.name in given}
    if recipe is not None:
        _replay(recipe, out, {k: v for k, v in overrides.items() if v is not None}, configs, resume, quiet)
        return
    if resume:
        if out is None:
            raise MagnError("--resume needs --out RUNDIR (the run folder to continue)")
        if configs:
            raise MagnError("--resume continues with RUNDIR/config.toml; drop --config")
        config = load_run_config(out, overrides)
        if export_only:
            from magncli.checkpoints import read_checkpoint_meta
            from magncli.runs.export import export_run
            path = export_run(out)
            note(f"exported step {read_checkpoint_meta(path)['step']} of {config.steps} to {path}")
            return
    else:
        if export_only:
            raise MagnError("--export writes the export of an existing run: give --resume --out RUNDIR")
        if not configs and task is None:
            raise MagnError("give --config RECIPE (see train/) or at least --task and --data")
        if not configs:      # no recipe: settings for this machine and these photos
            overrides = _plain_run_settings(overrides)
        config = load_config(configs, overrides)
        for warning in warnings_for(config):
            note(f"warning: {warning}")
        if out is None:
            name = configs[-1].stem if configs else config.task
            out = Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"

    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 alone reports
    trainer = None
    try:
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
            try:
                summary = trainer.run(cpu_hours=for_cpu_hours)
            finally:
                trainer.close()                 # the run folder's claim, on a stop too
    except (KeyboardInterrupt, Terminated):
        if trainer is not None and is_main and not quiet:   # after the progress bar is gone
            note(_stopped(trainer.step, config.steps, trainer.checkpoint_step, out))
        raise
    if is_main and not quiet:
        best = summary["best_val_psnr"]
        note(f"trained {summary['step']} steps ({summary['elapsed_s'] / 60:.1f} min) into {out}"
             + (f"; best validation PSNR {best:.2f} dB" if math.isfinite(best) else "")
             + f"; export: {Path(out) / EXPORT_FILE}")


def _replay(recipe: str, out: Optional[Path], flags: dict, configs: List[Path], resume: bool, quiet: bool) -> None:
    """--recipe: every stage as the recipe says; only the run folder and the threads are the user's."""
    from magncli.training.lineage import find_recipe, read_lineage, replay
    extra = sorted(set(flags) - {"threads"}) + (["--config"] if configs else []) + (["--resume"] if resume else [])
    if extra:
        raise MagnError(f"--recipe replays the recipe as written: drop {', '.join(extra)} "
                        "(--out, --threads and --quiet go with it; a second call continues)")
    if out is None:
        raise MagnError("--recipe needs --out RUN (a folder for the stages' runs)")
    lineage = read_lineage(find_recipe(recipe))
    export = replay(lineage, out, threads=flags.get("threads"), reporter=None if quiet else note)
    if not quiet:
        note(f"{lineage.checkpoint}: replayed {len(lineage.stages)} stage(s); export: {export}")


def _stopped(step: int, steps: int, checkpoint_step: Optional[int], out: Path) -> str:
    """The line of a run stopped by Ctrl-C or SIGTERM: how far it got, where it resumes, and how."""
    if checkpoint_step is None:     # check_new_run_folder lets a new run start over it
        return (f"stopped at step {step} of {steps}, before the first checkpoint: nothing to resume; "
                f"to start again: {shlex.join(['magn', *sys.argv[1:]])}")
    return (f"stopped at step {step} of {steps}; it resumes from the checkpoint of step {checkpoint_step}; "
            f"to continue: magn train --resume --out {shlex.quote(str(out))}")


def _progress(quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, disable=quiet, transient=True)


def _threads(value: Optional[str]) -> Optional[int]:
    """--threads N, or auto (0 in the recipe: the cores nothing else keeps busy)."""
    if value is None or value.strip().lower() == "auto":
        return None if value is None else 0
    try:
        threads = int(value)
    except ValueError:
        raise MagnError(f"--threads takes a number of threads or auto, not {value!r}") from None
    if threads < 1:
        raise MagnError(f"--threads takes a number of threads (at least 1) or auto, not {value!r}")
    return threads


def _plain_run_settings(flags: dict) -> dict:
    """A run with no recipe: the machine's CPU preset, the data's channels, a held-out
    split (magncli/training/plain_run.py), where the flags are silent."""
    from magncli.datasets import list_images
    from magncli.devices import cpu_has_native_bf16, resolve_device
    from magncli.training.data import resolve_data_folder
    from magncli.training.plain_run import is_color, plain_settings
    images = list_images(resolve_data_folder(flags.get("data") or ""))
    on_cpu = resolve_device(flags.get("device") or "auto").type == "cpu"
    settings = plain_settings(flags, on_cpu=on_cpu, native_bf16=on_cpu and cpu_has_native_bf16(),
                              images=images, is_color=is_color)
    note(f"no recipe: {settings.get('arch', 'magn')}, {settings['channels']} channel(s), batch "
         f"{settings.get('batch', 32)}, patch {settings.get('patch', 64)}, "
         f"{settings.get('precision', 'fp32')}, {settings.get('val_holdout', 0)} image(s) held out for validation")
    return settings
