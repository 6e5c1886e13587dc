"""Options and helpers shared by several commands (one definition each)."""
from __future__ import annotations

import logging
import shlex
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from magncli.inference import CPU_OVERLAP, InferenceOptions

# Progress, warnings and summaries go to stderr; stdout is for --json records.
console = Console(stderr=True)

DeviceOpt = typer.Option("auto", help="auto, cpu, cuda, cuda:N or mps.")
PrecisionOpt = typer.Option("fp32", help="fp32, or bf16/fp16 on CUDA (a non-finite tile is redone in fp32).")
TileOpt = typer.Option(None, help="Tile size, a multiple of 4 (default: automatic on CUDA, 64 on CPU).")
OverlapOpt = typer.Option(CPU_OVERLAP, help="Overlap between tiles, in pixels.")
EnsembleOpt = typer.Option(False, "--ensemble", help="x8 flip/rotate self-ensemble (8x slower).")
CompileOpt = typer.Option(None, "--compile/--no-compile",
                          help="torch.compile the attention (about 3.7x faster on CPU after a "
                               "~20 s compile). Default: on for CPU images of 8 or more tiles.")
TilingOpt = typer.Option("blend", help="blend: overlapping tiles, blended; chop: DAGL/PANet's official "
                                      "recursive quadrants with hard seams (to regenerate their numbers).")


def inference_options(device: str, precision: str, tile: Optional[int], overlap: int,
                      ensemble: bool, tiling: str = "blend", compile: Optional[bool] = None) -> InferenceOptions:
    return InferenceOptions(device=device, precision=precision, tile=tile, overlap=overlap,
                            ensemble=ensemble, tiling=tiling, compile=compile)


def command_line() -> str:
    """This run's command as a user would type it ("magn eval ..."), for provenance."""
    return shlex.join(["magn", *sys.argv[1:]])


def setup_logging() -> None:
    """Library warnings (OOM fallbacks, fp32 redos) as one rich line each on stderr."""
    logger = logging.getLogger("magn")
    if not logger.handlers:
        handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
