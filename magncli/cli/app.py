"""The `magn` Typer app. Each command lives in its own module and only parses options
and calls the library; MagnError becomes a one-line message and exit code 1."""
from __future__ import annotations

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


def _version(value: bool) -> None:
    if value:
        from magncli import __version__
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
        print(f"magn: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("magn: interrupted", file=sys.stderr)
        sys.exit(130)
