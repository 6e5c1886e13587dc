"""The `magn` Typer app: the parent of one Typer app per command module, which only
parses options and calls the library (the modules never import this one). A MagnError
becomes a one-line message, in the command line's terms, and exit code 1."""
from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from magncli.cli import degrade, eval, restore, train, weights
from magncli.cli.common import Terminated, cli_message, error, setup_logging  # noqa: F401 - cli_message: tests, scripts
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


def _terminate(signum, frame) -> None:
    raise Terminated()


def main() -> None:
    setup_logging()
    # The default SIGTERM ends the process at once, leaving claims and temporaries.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except MagnError as e:
        error(str(e))
        sys.exit(1)
    except KeyboardInterrupt:
        print("magn: interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("magn: terminated", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
