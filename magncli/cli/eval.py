"""`magn eval`: score models and baselines on benchmark sets by the protocol."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer

from magncli.cli.app import app
from magncli.cli.common import command_line
from magncli.datasets import sets_for
from magncli.degrade import DEFAULT_PATTERN
from magncli.errors import MagnError
from magncli.evaluate import BASELINES, run_eval
from magncli.results import check_results_path, results_tables, write_results
from magncli.tasks import TASKS


def _split(text: Optional[str], option: str) -> List[str]:
    """The items of a comma-separated option; [] when it was not given. Given but empty,
    or with an empty item ("10,,20", ","), it is an error, never the default."""
    if text is None:
        return []
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise MagnError(f"{option} takes a comma-separated list with no empty items, got {text!r}")
    return parts


def _levels(text: Optional[str]) -> List[float]:
    try:
        levels = [float(v) if "." in v or "e" in v.lower() else int(v) for v in _split(text, "--levels")]
    except ValueError:
        levels = None
    if levels is None or not all(math.isfinite(v) for v in levels):
        raise MagnError(f"--levels takes comma-separated numbers, got {text!r}")
    return levels


def _inference_options(models: List[str], **given):
    """InferenceOptions for checkpoint models (None when only baselines run). Options left
    unset keep the engine's defaults."""
    if all(m in BASELINES for m in models):
        return None
    from magncli.inference import InferenceOptions
    return InferenceOptions(**{k: v for k, v in given.items() if v is not None})


@app.command("eval")
def eval_command(
    task: str = typer.Option(..., "--task", help="denoise | dejpeg | demosaic"),
    sets: Optional[str] = typer.Option(
        None, "--sets", help="Comma-separated set names or folders (default: every set of the task)."),
    levels: Optional[str] = typer.Option(
        None, "--levels", help="Comma-separated sigmas (denoise) or JPEG qualities (dejpeg); "
                               "default " + "; ".join(f"{','.join(map(str, t.default_levels))} ({t.name})"
                                                      for t in TASKS.values() if t.default_levels) + "."),
    models: List[str] = typer.Option(
        ["input"], "--model", "-m",
        help=f"Repeatable. Baselines: {', '.join(BASELINES)}; or a checkpoint name/path, or ARCH:PATH."),
    pattern: str = typer.Option(DEFAULT_PATTERN, "--pattern", help="demosaic: Bayer pattern."),
    channels: Optional[str] = typer.Option(
        None, "--channels", help="gray | color (default: the set's first track; LIVE1 gray = Y)."),
    seed: int = typer.Option(0, "--seed", help="Noise seed (one RandomState(seed) per image)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder of the test sets."),
    inputs: Optional[Path] = typer.Option(
        None, "--inputs", help="Already-degraded images, matched to the set by file name (one set, one level)."),
    outputs: List[Path] = typer.Option(
        [], "--output", "-o", help="Results file: .json, .csv or .md (repeatable)."),
    save_images: Optional[Path] = typer.Option(None, "--save-images", help="Folder for restored images."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="PNG sheet of labelled crops."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Model tile size in pixels."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="Overlap between model tiles."),
    ensemble: bool = typer.Option(False, "--ensemble", help="x8 flip/rotate self-ensemble."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the "
                                           "attention (default: on for CPU images of 8+ tiles)."),
    tiling: Optional[str] = typer.Option(None, "--tiling", help="blend (default) or chop: DAGL/PANet's "
                                         "official recursive quadrants, to regenerate their numbers."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... for models."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | bf16 | fp16 for models."),
    quantize: bool = typer.Option(False, "--quantize", help="Score outputs rounded to 8 bits."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing output files."),
) -> None:
    """Evaluate models on benchmark sets; print tables and optionally write results."""
    from rich.console import Console

    for output in outputs:
        check_results_path(output, overwrite)  # fail before the run, not after it
    set_names = _split(sets, "--sets") or sets_for(task, channels)  # default: every set of the task
    options = _inference_options(models, tile=tile, overlap=overlap,
                                 ensemble=ensemble or None, device=device, precision=precision,
                                 tiling=tiling, compile=compile)
    status = Console(stderr=True)
    rows = run_eval(task, set_names, _levels(levels), models, seed=seed, data_root=data_root,
                    options=options, save_images=save_images, quantize=quantize,
                    channels=channels, pattern=pattern, inputs=inputs, sheet=sheet,
                    overwrite=overwrite,
                    progress=lambda line: status.print(line, markup=False, highlight=False))
    console = Console()
    for table in results_tables(rows):
        console.print(table)
    # Each row says how it was made, so that the numbers can be regenerated (model cards).
    command = command_line()
    for row in rows:
        row["command"] = command
    for output in outputs:
        write_results(rows, output, overwrite)
        status.print(f"results written to {output}")
