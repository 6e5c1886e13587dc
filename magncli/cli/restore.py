"""`magn restore`: restore image files, folders and globs."""
from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from magncli.cli.app import app, cli_message
from magncli.cli.common import (CompileOpt, DeviceOpt, EnsembleOpt, OverlapOpt, PrecisionOpt, TileOpt, TilingOpt, console,
                                inference_options)
from magncli.errors import MagnError
from magncli.fileio import remove_stale_temporaries


class Task(str, Enum):
    denoise = "denoise"
    dejpeg = "dejpeg"
    demosaic = "demosaic"


@app.command("restore")
def restore(
    inputs: List[str] = typer.Argument(..., metavar="INPUT...", help="Image files, folders or glob patterns."),
    task: Task = typer.Option(..., "--task", "-t", help="What to undo."),
    sigma: Optional[float] = typer.Option(None, help="Noise level (0-255 scale) for per-sigma denoising models."),
    quality: Optional[int] = typer.Option(None, help="JPEG quality to assume (dejpeg)."),
    pattern: str = typer.Option("grbg", help="Bayer pattern of demosaic inputs: grbg, rggb, gbrg, bggr."),
    weights: Optional[str] = typer.Option(None, "--weights", "-w", help="Checkpoint: path, URL or published name."),
    arch: str = typer.Option("auto", help="Architecture of --weights: auto, magn, dagl, panet."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (default: next to each input)."),
    suffix: str = typer.Option("_magn", help="Appended to each output file name."),
    ext: str = typer.Option("png", help="Output format: png, tif, jpg, webp, bmp."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Descend into subfolders."),
    overwrite: bool = typer.Option(False, help="Replace existing output files."),
    jpeg_quality: int = typer.Option(95, min=1, max=100, help="Quality of JPEG outputs."),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    tile: Optional[int] = TileOpt,
    overlap: int = OverlapOpt,
    ensemble: bool = EnsembleOpt,
    tiling: str = TilingOpt,
    compile: Optional[bool] = CompileOpt,
    offline: bool = typer.Option(False, help="Never download weights (also MAGN_OFFLINE=1)."),
    model_dir: Optional[str] = typer.Option(None, help="Weights cache folder (also MAGN_HOME)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON record per image on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Restore images (denoise, remove JPEG artifacts or demosaic).

    Outputs are written next to the inputs as NAME_magn.png, or mirrored under -o.
    Every image is attempted: one that fails (unreadable, too large, several frames,
    output exists or cannot be written, out of memory) gets one line, and the exit code
    is 1 if any failed.
    """
    from magncli.restore import Restorer, plan_jobs

    level = sigma if task == Task.denoise else quality if task == Task.dejpeg else None
    jobs = plan_jobs(inputs, out_dir=str(output) if output else None, suffix=suffix, ext=ext,
                     recursive=recursive)
    restorer = Restorer(task=task.value, weights=weights, arch=arch, level=level, pattern=pattern,
                        options=inference_options(device, precision, tile, overlap, ensemble, tiling, compile),
                        offline=offline or None, model_dir=model_dir, quiet=quiet)
    for stale in remove_stale_temporaries(job.target for job in jobs if job.target):
        console.print(f"removed {escape(str(stale))}, a temporary file left by an interrupted "
                      "magn run", highlight=False, soft_wrap=True)
    failures = 0
    start = time.perf_counter()
    with _progress(len(jobs), quiet) as progress:
        bar = progress.add_task("restoring", total=len(jobs))
        for job in jobs:
            progress.update(bar, description=escape(job.source.name))
            try:
                if job.error:
                    raise MagnError(job.error)
                record = restorer.restore_file(job.source, job.target, overwrite=overwrite,
                                               jpeg_quality=jpeg_quality)
                line = escape(f"{job.source} -> {job.target} ({_describe(record)})")
            except Exception as e:  # noqa: BLE001 - one image's failure never stops the rest
                failures += 1
                record = {"input": str(job.source), "error": cli_message(image_error(job.source, e))}
                line = f"[red]error:[/red] {escape(record['error'])}"
            if as_json:
                typer.echo(json.dumps(record))
            if not quiet or "error" in record:
                progress.console.print(line, highlight=False, markup=True, soft_wrap=True)
            progress.advance(bar)
    if not quiet:
        ok = len(jobs) - failures
        console.print(f"{ok} of {len(jobs)} image(s) restored in {time.perf_counter() - start:.1f} s"
                      + (f", {failures} failed" if failures else ""), highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(1)


def image_error(source: Path, e: Exception) -> str:
    """One line for one input's failure, whatever it was (the batch goes on)."""
    if isinstance(e, MagnError):
        return str(e)
    if isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and "memory" in str(e).lower()):
        return f"{source}: out of memory (try a smaller --tile)"
    if isinstance(e, OSError):
        where = f"{e.filename}: " if e.filename else f"{source}: "
        return f"{where}{e.strerror or e}"
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{source}: {type(e).__name__}{': ' + first if first else ''}"


def _describe(record: dict) -> str:
    """'1.2 s, quality 20 from the JPEG tables, model X': what was assumed and what ran."""
    parts = [f"{record['seconds']:.1f} s"]
    if record.get("quality") is not None:
        parts.append(f"quality {record['quality']} from the {record['quality_source']}")
    if record.get("model"):
        parts.append(f"model {record['model']}")
    return ", ".join(parts)


def _progress(total: int, quiet: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=quiet or total < 1,
                    transient=True)
