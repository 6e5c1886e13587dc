"""`magn degrade`: make benchmark inputs (noisy, JPEG or mosaic images) from clean files."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List

import typer

from magncli.cli.common import (PatternOpt, QualityOpt, SigmaOpt, SubsamplingOpt, TaskOpt, failure, out,
                                task_level)
from magncli.degrade import DEFAULT_PATTERN, DEFAULT_SEED, DEFAULT_SUBSAMPLING
from magncli.degrade_files import OUTPUT_FORMATS, degrade_files
from magncli.tasks import get_task

app = typer.Typer()


@app.command("degrade")
def degrade_command(
    inputs: Annotated[List[Path], typer.Argument(metavar="INPUT...", help="Clean image files or folders of images.")],
    task: TaskOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for the degraded files.")],
    sigma: SigmaOpt = None,
    quality: QualityOpt = None,
    pattern: PatternOpt = DEFAULT_PATTERN,
    subsampling: SubsamplingOpt = DEFAULT_SUBSAMPLING,
    seed: Annotated[int, typer.Option(
        "--seed", help="denoise: every image gets a fresh RandomState(seed).")] = DEFAULT_SEED,
    fmt: Annotated[str, typer.Option(
        "--format", help=" ".join(f"{name}: {note}." for name, (_, note) in OUTPUT_FORMATS.items()))] = "png",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing files.")] = False,
) -> None:
    """Degrade images by the benchmark protocol and write them with manifest.json.

    Every image is attempted: one that fails gets one line on stderr, the others are
    written, manifest.json lists exactly the files written, and the exit code is 1."""
    task = get_task(task)
    level = task_level(task, sigma=sigma, quality=quality)
    degradation = task.degradation(level, seed, pattern, subsampling)
    manifest = degrade_files(inputs, output, degradation, fmt, overwrite)
    failed = manifest.get("failed", [])
    for failed_file in failed:
        failure(failed_file["error"])
    written = len(manifest["files"])
    if written:
        out(f"wrote {written} {fmt} files and manifest.json to {output}"
            + (f"; {len(failed)} failed" if failed else ""))
    if failed:
        raise typer.Exit(1)
