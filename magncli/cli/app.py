"""The `magn` Typer app. Each command lives in its own module and only parses options
and calls the library; MagnError becomes a one-line message and exit code 1."""
from __future__ import annotations

import re
import sys

import typer

from magncli.errors import MagnError

app = typer.Typer(
    name="magn",
    help="MAGN image restoration: denoising, JPEG artifact removal and demosaicing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
_FLAGS = {"overwrite", "resume", "recursive", "ensemble", "offline"}   # `name=True` is the bare flag
_FLAG_RE = re.compile(r"(?<![\w./\\-])(%s)=True\b" % "|".join(_FLAGS))
_PARAMETER_RE = re.compile(r"(?<![\w./\\-])(%s)=(?=(\S?))" % "|".join(_PARAMETER_OPTIONS))


def _option(match: re.Match) -> str:
    """weights=PATH -> --weights PATH; a parameter named without a value: (sigma=) -> (--sigma)."""
    option = _PARAMETER_OPTIONS[match.group(1)]
    return option + " " if match.group(2) and match.group(2) not in ",;)" else option


def cli_message(error) -> str:
    """A library error's message as the command line says it: weights=PATH -> --weights PATH,
    overwrite=True -> --overwrite."""
    text = _FLAG_RE.sub(lambda m: "--" + m.group(1), str(error))
    return _PARAMETER_RE.sub(_option, text)


def _version(value: bool) -> None:
    if value:
        from magncli.version import __version__
        typer.echo(f"magn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """MAGN image restoration: denoising, JPEG artifact removal and demosaicing."""


def _register() -> None:
    # Imported here so that `magn --help` lists every command; each module adds itself.
    from magncli.cli import degrade, eval, restore, train, weights  # noqa: F401


def main() -> None:
    from magncli.cli.common import setup_logging
    setup_logging()
    _register()
    try:
        app()
    except MagnError as e:
        print(f"magn: error: {cli_message(e)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("magn: interrupted", file=sys.stderr)
        sys.exit(130)
