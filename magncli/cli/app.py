"""The `magn` Typer app: the parent of one Typer app per command module, which only
parses options and calls the library (the modules never import this one). A MagnError
becomes a one-line message, in the command line's terms, and exit code 1."""
from __future__ import annotations

# Before anything imports torch: the `magn` process's idle OpenMP threads sleep instead
# of spinning, so that several magn processes on the same cores share them (a user's
# OMP_WAIT_POLICY wins; `magn train` keeps OpenMP's default). The command's setting, not
# the library's: `import magncli` leaves a program's environment alone. The policy and
# why: magncli/parallel.py.
import sys

from magncli.parallel import set_default_wait_policy

set_default_wait_policy(sys.argv[1:])

import signal  # noqa: E402
from typing import Annotated, Optional  # noqa: E402

import typer  # noqa: E402
from typer.core import TyperArgument  # noqa: E402

from magncli.cli import degrade, eval, restore, train, weights  # noqa: E402
from magncli.cli.common import Terminated, cli_message, error, setup_logging  # noqa: E402,F401 - cli_message: tests, scripts
from magncli.errors import MagnError  # noqa: E402

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


# What a value is, as the help says it, for Typer's labels of Python types ("<str>", "<int>").
_VALUE_NAMES = {"str": "TEXT", "int": "INTEGER", "int range": "INTEGER", "float": "FLOAT",
                "float range": "FLOAT", "path": "PATH", "file": "FILE", "directory": "DIRECTORY"}


def _value_name(typer_label: Optional[str]) -> Optional[str]:
    """"<int range>" -> "INTEGER", "<list[str]>" -> "TEXT" (a repeatable option's value)."""
    inner = (typer_label or "").removeprefix("<").removesuffix(">")
    if inner.startswith("list[") and inner.endswith("]"):
        inner = inner[len("list["):-1]
    return _VALUE_NAMES.get(inner, inner or None)


def _readable_type(param, typer_type):
    """The help's type column of one parameter: none for a flag or an argument (its name
    says it: INPUT...), an option's own metavar, else the value's kind."""
    def display(ctx):
        if isinstance(param, TyperArgument) or param.is_flag:
            return None
        return param.metavar if param.metavar is not None else _value_name(typer_type(ctx))
    return display


def readable_help(command):
    """`command` and its subcommands with help that says what to type, where Typer shows
    Python types ("<bool>" for a flag, "<str>", "<list[str]>"): no metavar for a flag or
    an argument, TEXT, INTEGER, FLOAT or PATH for a value (or the option's own name)."""
    for param in command.params:
        param.display_type_rich = _readable_type(param, param.display_type_rich)
    make_help_option = command.get_help_option          # --help is made when the help is shown

    def help_option(ctx):
        option = make_help_option(ctx)
        if option is not None:
            option.display_type_rich = _readable_type(option, option.display_type_rich)
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        readable_help(sub)
    return command


def cli_command():
    """The `magn` command as main runs it (readable_help over the Typer app)."""
    return readable_help(typer.main.get_command(app))


def main() -> None:
    setup_logging()
    # The default SIGTERM ends the process at once, leaving claims and temporaries.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli_command()(prog_name="magn")
    except MagnError as e:
        error(str(e))
        sys.exit(1)
    except KeyboardInterrupt:
        print("magn: interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("magn: terminated", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
