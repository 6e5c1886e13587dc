"""What the commands share (magncli.cli.common): library errors said in the command
line's terms, the one comma-list parser, and the level option that belongs to a task."""
import pytest

from magncli.cli.common import cli_message, comma_list, comma_numbers, task_level
from magncli.errors import MagnError
from magncli.tasks import get_task


@pytest.mark.parametrize("library, cli", [
    ("pass weights=PATH", "pass --weights PATH"),
    ("a.png: already exists (pass overwrite=True to replace it)", "a.png: already exists (pass --overwrite to replace it)"),
    ("tile=6 must be a positive multiple of 4", "--tile 6 must be a positive multiple of 4"),
    ("task denoise needs a level (sigma=)", "task denoise needs a level (--sigma)"),
    ("a.png: the output would overwrite the input (set suffix=, ext= or out_dir=)",
     "a.png: the output would overwrite the input (set --suffix, --ext or --output)"),
    ("pass weights= with a color model", "pass --weights with a color model"),
    ("x/data=1/y.png and metadata=3 stay", "x/data=1/y.png and metadata=3 stay"),
])
def test_library_messages_name_parameters_and_the_cli_says_options(library, cli):
    assert cli_message(MagnError(library)) == cli


def test_comma_lists_are_strict_and_absent_is_none():
    assert comma_list(None, "--sets") is None and comma_list(" a, b ", "--sets") == ["a", "b"]
    assert comma_numbers("15,25.5,1e1", "--levels") == [15, 25.5, 10.0]
    assert comma_numbers("0,55", "--sigma-range", float) == [0.0, 55.0]
    for text, kind in ((",", None), ("", None), ("15,,25", None), ("15,x", None), ("nan", None), ("10.5", int)):
        with pytest.raises(MagnError, match="--levels"):
            comma_numbers(text, "--levels", kind)


def test_a_level_option_belongs_to_its_task():
    assert task_level(get_task("denoise"), sigma=25, quality=None) == 25
    assert task_level(get_task("demosaic"), sigma=None, quality=None) is None
    with pytest.raises(MagnError, match="--sigma is not a setting of --task dejpeg"):
        task_level(get_task("dejpeg"), sigma=25, quality=None)


def test_the_recorded_command_names_no_path_of_this_machine(monkeypatch):
    """Results files and model cards are published: the home folder reads as "~"."""
    from pathlib import Path
    from magncli.cli.common import command_line
    home = str(Path.home())
    monkeypatch.setattr("sys.argv", ["/venv/bin/magn", "eval", "-o", f"{home}/evals/a b.json", "--sets", "Set12"])
    assert command_line() == "magn eval -o '~/evals/a b.json' --sets Set12"
