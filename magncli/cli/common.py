"""What several commands share, defined once: the options (Annotated, as Typer recommends),
the comma-list parsers, how anything is printed, and how a library error is said on the
command line.

Printing: results a script reads (records, paths, --json) go to stdout with `out` and
`print_json`, tables with `stdout_console`; progress, notes and errors go to stderr
through `console` (`note`, `failure`, `error`), so that they interleave with progress
bars.
"""
from __future__ import annotations

import json
import logging
import math
import re
import shlex
import sys
from typing import TYPE_CHECKING, Annotated, Callable, List, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from magncli.degrade import BAYER_PATTERNS, JPEG_SUBSAMPLINGS
from magncli.errors import MagnError
from magncli.fileio import home_as_tilde
from magncli.tasks import TASKS, Task

if TYPE_CHECKING:                       # torch: loaded only when a model runs
    from magncli.inference import InferenceOptions

console = Console(stderr=True, emoji=False)
stdout_console = Console(emoji=False)

# --------------------------------------------------------------------------- options
# The engine's defaults (ENGINE), so that every command that runs a model starts from the
# same; read without loading torch, which --help never needs.

DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", help="fp32; bf16 on CUDA or on a CPU with native bf16 (AVX512-BF16 or AMX); fp16 on "
                        "CUDA. A tile that overflows is redone in fp32. Default: restore runs a published "
                        "checkpoint as measured best on this CPU (its cpu_defaults: bf16 where the CPU has "
                        "it natively), else fp32; eval runs fp32, the protocol.")]
TileOpt = Annotated[Optional[int], typer.Option(
    "--tile", help="Tile size, a multiple of 4 (default: automatic on CUDA, 64 on CPU).")]
OverlapOpt = Annotated[int, typer.Option("--overlap", help="Overlap between tiles, in pixels.")]
EnsembleOpt = Annotated[bool, typer.Option("--ensemble", help="x8 flip/rotate self-ensemble (8x slower).")]
CompileOpt = Annotated[Optional[bool], typer.Option(
    "--compile/--no-compile", help="torch.compile the attention of the chunked backend "
                                   "(MAGN_ATTENTION=chunked), after a one-time compile of about 20 s. The default "
                                   "backends are fused already and compile nothing. Default: on for the "
                                   "chunked backend on CPU images of 8 or more tiles.")]
TilingOpt = Annotated[str, typer.Option(
    "--tiling", help="blend: overlapping tiles, blended; chop: DAGL/PANet's official recursive quadrants "
                     "with hard seams (to regenerate their numbers).")]

# The task: a name of the registry, made its Task by the command (tasks.get_task: a one-line
# error naming them all), which the library then takes.
TaskOpt = Annotated[str, typer.Option("--task", "-t", help=f"What to undo: {' | '.join(TASKS)}.")]
SigmaOpt = Annotated[Optional[float], typer.Option(
    "--sigma", help="denoise: the noise sigma (0-255 scale), told to a model with a level map "
                    "(FFDNet needs it); without it the model runs blind.")]
QualityOpt = Annotated[Optional[int], typer.Option("--quality", help="dejpeg: JPEG quality 1-100.")]
SubsamplingOpt = Annotated[str, typer.Option(
    "--subsampling", help="dejpeg: chroma subsampling of the color JPEGs, "
                          f"{' | '.join(n.replace(':', '') for n in JPEG_SUBSAMPLINGS)} (420: the protocol's).")]
PatternOpt = Annotated[str, typer.Option(
    "--pattern", help=f"demosaic: Bayer pattern of the mosaics, {' | '.join(BAYER_PATTERNS)}.")]


def inference_options(device: str, precision: str, tile: Optional[int], overlap: int, ensemble: bool,
                      tiling: str, compile: Optional[bool]) -> "InferenceOptions":
    from magncli.inference import InferenceOptions
    return InferenceOptions(device=device, precision=precision, tile=tile, overlap=overlap,
                            ensemble=ensemble, tiling=tiling, compile=compile)


def task_level(task: Task, **given: Optional[float]) -> Optional[float]:
    """The level option that belongs to `task` (--sigma to denoise, --quality to dejpeg),
    or None; one given for another task is an error, never silently ignored."""
    key = task.level_key
    for name, value in given.items():
        if value is not None and name != key:
            raise MagnError(f"--{name} is not a setting of --task {task.name}")
    return given.get(key) if key else None


# --------------------------------------------------------------------------- comma lists
def comma_list(text: Optional[str], option: str) -> Optional[List[str]]:
    """The items of a comma-separated option; None when it was not given. Given but empty,
    or with an empty item ("10,,20", ","), it is an error, never the default."""
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise MagnError(f"{option} takes a comma-separated list with no empty items, got {text!r}")
    return parts


def comma_numbers(text: Optional[str], option: str, kind: Optional[Callable] = None) -> Optional[List]:
    """"0,55" -> [0, 55]: finite numbers of `kind` (int or float), or each as written
    (an int unless it has a point or an exponent) when kind is None; None when not given."""
    parts = comma_list(text, option)
    if parts is None:
        return None
    as_written = lambda v: float(v) if "." in v or "e" in v.lower() else int(v)  # noqa: E731
    try:
        numbers = [(kind or as_written)(part) for part in parts]
    except ValueError:
        numbers = None
    if numbers is None or not all(math.isfinite(v) for v in numbers):
        raise MagnError(f"{option} takes comma-separated numbers, got {text!r}")
    return numbers


# --------------------------------------------------------------------------- printing
def out(line: str) -> None:
    """A result line on stdout (what a script reads)."""
    typer.echo(line)


def print_json(obj) -> None:
    out(json.dumps(obj, indent=2, default=str))


def note(line: str) -> None:
    """A line for the person at the terminal, on stderr, as written (no markup)."""
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def failure(message: str) -> None:
    """One item of a batch failed and the batch goes on: 'error: MESSAGE' on stderr."""
    console.print(Text.assemble(("error:", "red"), " ", cli_message(message)), highlight=False, soft_wrap=True)


def error(message: str) -> None:
    """The command failed: 'magn: error: MESSAGE' on stderr."""
    print(f"magn: error: {cli_message(message)}", file=sys.stderr)


# --------------------------------------------------------------------------- library errors
# The library names what would fix an error as a Python parameter ("pass weights=PATH",
# "tile=6 is not ...", "overwrite=True"); on the command line the same thing is an option
# ("pass --weights PATH", "--tile 6 is not ...", "--overwrite").
_PARAMETER_OPTIONS = {
    "weights": "--weights", "arch": "--arch", "levels": "--levels", "task": "--task",
    "channels": "--channels", "sigma": "--sigma", "quality": "--quality", "pattern": "--pattern",
    "fmt": "--format", "tile": "--tile", "overlap": "--overlap", "device": "--device",
    "precision": "--precision", "suffix": "--suffix", "ext": "--ext", "out_dir": "--output",
    "inputs": "--inputs", "data_root": "--data-root", "data": "--data", "run_dir": "--out",
    "lr": "--lr"}
_FLAGS = {"overwrite", "skip_existing", "resume", "recursive", "ensemble", "offline",
          "force"}   # `name=True` is the bare flag (skip_existing=True: --skip-existing)
_FLAG_RE = re.compile(r"(?<![\w./\\-])(%s)=True\b" % "|".join(_FLAGS))
_PARAMETER_RE = re.compile(r"(?<![\w./\\-])(%s)=(?=(\S?))" % "|".join(_PARAMETER_OPTIONS))


def _option(match: re.Match) -> str:
    """weights=PATH -> --weights PATH; a parameter named without a value: (sigma=) -> (--sigma)."""
    option = _PARAMETER_OPTIONS[match.group(1)]
    return option + " " if match.group(2) and match.group(2) not in ",;)" else option


def cli_message(error) -> str:
    """A library error's message as the command line says it: weights=PATH -> --weights PATH,
    overwrite=True -> --overwrite."""
    text = _FLAG_RE.sub(lambda m: "--" + m.group(1).replace("_", "-"), str(error))
    return _PARAMETER_RE.sub(_option, text)


# --------------------------------------------------------------------------- the run
class Terminated(BaseException):
    """SIGTERM, raised in the main thread (cli.app installs the handler) so that every
    `with` block unwinds as on Ctrl-C: claims released, temporaries removed. A
    BaseException, so that neither Click nor a per-image `except Exception` takes it."""


def command_line() -> str:
    """This run's command as a user would type it ("magn eval ..."), for provenance. The
    files it goes into are published, and name no path of this machine: the home folder
    reads as "~"."""
    return home_as_tilde(shlex.join(["magn", *sys.argv[1:]]))


def setup_logging() -> None:
    """Library warnings (OOM fallbacks, fp32 redos) as one rich line each on stderr."""
    logger = logging.getLogger("magn")
    if not logger.handlers:
        handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
