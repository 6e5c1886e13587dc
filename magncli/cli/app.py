"""The `magn` Typer app: the parent of one Typer app per command module, which only
parses options and calls the library (the modules never import this one). A MagnError
becomes a one-line message, in the command line's terms, and exit code 1."""
from __future__ import annotations

import sys
from typing import Annotated

import typer

from magncli.cli import degrade, eval, restore, train, weights
from magncli.cli.common import cli_message, error, setup_logging  # noqa: F401 - cli_message: tests, scripts
from magncli.errors import MagnError

app = typer.Typer(
    name="magn",
    help="MAGN image restoration: denoising, JPEG artifact removal and demosaicing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for command in (restore, eval, degrade, train, weights):
    app.add_typer(command.app)


def _version(value: bool) -> None:
    if value:
        from magncli.version import __version__
        typer.echo(f"magn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """MAGN image restoration: denoising, JPEG artifact removal and demosaicing."""


def main() -> None:
    setup_logging()
    try:
        app()
    except MagnError as e:
        error(str(e))
        sys.exit(1)
    except KeyboardInterrupt:
        print("magn: interrupted", file=sys.stderr)
        sys.exit(130)
