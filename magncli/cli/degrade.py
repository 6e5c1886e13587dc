"""`magn degrade`: make benchmark inputs (noisy, JPEG or mosaic images) from clean files."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from magncli.cli.app import app
from magncli.degrade import DEFAULT_PATTERN, DEFAULT_SEED
from magncli.degrade_files import degrade_files
from magncli.tasks import make_degradation
from magncli.errors import MagnError


@app.command("degrade")
def degrade_command(
    inputs: List[Path] = typer.Argument(..., help="Clean image files or folders of images."),
    task: str = typer.Option(..., "--task", help="denoise | dejpeg | demosaic"),
    output: Path = typer.Option(..., "--output", "-o", help="Folder for the degraded files."),
    sigma: Optional[float] = typer.Option(
        None, "--sigma", help="denoise: Gaussian noise sigma on the 0-255 scale."),
    quality: Optional[int] = typer.Option(None, "--quality", help="dejpeg: JPEG quality 1-100."),
    pattern: str = typer.Option(DEFAULT_PATTERN, "--pattern",
                                help="demosaic: Bayer pattern grbg | rggb | gbrg | bggr."),
    seed: int = typer.Option(DEFAULT_SEED, "--seed",
                             help="denoise: every image gets a fresh RandomState(seed)."),
    fmt: str = typer.Option(
        "png", "--format",
        help="png: 8-bit, clipped and rounded. png16: 16-bit, clipped, round(value*65535). "
             "tiff: float32, noise kept exactly (unclipped). jpg (dejpeg): the JPEG file itself."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
) -> None:
    """Degrade images by the benchmark protocol and write them with manifest.json.

    Every image is attempted: one that fails gets one line on stderr, the others are
    written, manifest.json lists exactly the files written, and the exit code is 1."""
    if (task == "denoise" and quality is not None) or (task == "dejpeg" and sigma is not None):
        raise MagnError("--sigma is for --task denoise, --quality for --task dejpeg")
    degradation = make_degradation(task, sigma if task == "denoise" else quality, seed, pattern)
    manifest = degrade_files(inputs, output, degradation, fmt, overwrite)
    failed = manifest.get("failed", [])
    for failure in failed:
        typer.echo(f"error: {failure['error']}", err=True)
    written = len(manifest["files"])
    if written:
        typer.echo(f"wrote {written} {fmt} files and manifest.json to {output}"
                   + (f"; {len(failed)} failed" if failed else ""))
    if failed:
        raise typer.Exit(1)
