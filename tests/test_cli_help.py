"""What a new user reads first: `magn --help` and each command's --help, as the real
command prints them (python -m magncli, in a fresh process)."""
import json
import os
import re
import subprocess
import sys

import pytest

COMMANDS = ["", "restore", "eval", "degrade", "train", "weights", "weights list", "weights download", "weights results",
            "weights verify", "weights path", "weights add", "weights scores"]

# Runs `magn ARGS --help` for every command through the real entry point (magncli.cli.app.main,
# as python -m magncli runs it), in one process; prints each exit code and help text, and
# whether torch was imported.
_HELPS = """
import contextlib, io, json, sys
from magncli.cli.app import main
helps = {}
for command in json.loads(sys.argv[1]):
    sys.argv = ["magn", *command.split(), "--help"]
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
    helps[command] = [code, text.getvalue()]
print(json.dumps({"helps": helps, "torch": "torch" in sys.modules}))
"""


@pytest.fixture(scope="module")
def helps():
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-c", _HELPS, json.dumps(COMMANDS)], capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_help_exits_0(helps):
    for command, (code, text) in helps["helps"].items():
        assert code == 0 and "Usage: magn" in text, (command, text)


def test_help_shows_what_to_type_not_python_types(helps):
    """No "<bool>", "<str>", "<list[str]>": a flag shows no metavar, a value TEXT,
    INTEGER, FLOAT or PATH, and rich markup eats nothing ("Manifest file ." had lost
    its "[default: ...]")."""
    for command, (_, text) in helps["helps"].items():
        assert "<" not in text.replace("<=", ""), (command, text)
        assert not re.search(r"\w \.(\s|$)", text), (command, text)        # "file ." after eaten markup
    restore = helps["helps"]["restore"][1]
    rows = {line.split()[1]: line for line in restore.splitlines() if line.startswith("│") and "--" in line}
    assert "INTEGER" in rows["--tile"] and "FLOAT" in rows["--sigma"] and "PATH" in rows["--output"]
    assert "TEXT" in rows["--weights"] and " N " in rows["--jobs"]
    for flag in ("--recursive", "--json", "--help", "--force"):
        assert rows[flag].split()[1:3] != ["TEXT"] and "TEXT" not in rows[flag].split("Run")[0], rows[flag]
    assert "Manifest file (default: $MAGN_MANIFEST" in helps["helps"]["weights list"][1]
    assert "list, download, verify, locate, add, scores" in helps["helps"]["weights"][1]
    assert "list, download, verify, locate, add, scores" in helps["helps"][""][1]


def test_help_promises_no_cpu_compile_speed_up_and_says_where_bf16_runs(helps):
    restore = " ".join(helps["helps"]["restore"][1].replace("│", " ").split())
    assert "faster on CPU" not in restore
    assert "chunked backend" in restore and "compile nothing" in restore
    assert "bf16 on CUDA or on a CPU with native bf16" in restore


def test_help_loads_no_torch(helps):
    """`magn --help` and every command's --help answer without importing torch (seconds
    of a new user's first minute); torch loads when a command runs a model."""
    assert helps["torch"] is False


def test_import_magncli_loads_no_torch_until_the_api_is_used():
    probe = ("import sys, magncli; before = 'torch' in sys.modules; "
             "options = magncli.InferenceOptions(); from magncli import restore_array; "
             "print(before, 'torch' in sys.modules, options.overlap, restore_array.__module__)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "16", "magncli.api"]


def test_the_command_line_starts_from_the_engines_defaults():
    from dataclasses import fields

    from magncli.engine_defaults import ENGINE
    from magncli.inference import InferenceOptions
    engine = InferenceOptions()
    assert [getattr(engine, f.name) for f in fields(ENGINE)] == [getattr(ENGINE, f.name) for f in fields(ENGINE)]
    assert (engine.device, engine.precision, engine.overlap, engine.tiling) == ("auto", None, 16, "blend")
    assert engine.describe()["precision"] == "fp32"          # None: fp32, unless a checkpoint's own


def test_train_help_shows_the_defaults_the_run_takes(helps):
    """#36: `magn train --help` showed no defaults. Each "(default A / B)" must be what a
    run without a recipe takes: A the CPU preset, B the paper's TrainConfig."""
    from magncli.training.config import TrainConfig
    from magncli.training.plain_run import CPU_PRESET

    text = " ".join(helps["helps"]["train"][1].replace("│", " ").split())
    for flag, field in (("--batch", "batch"), ("--patch", "patch"), ("--steps", "steps"), ("--lr", "lr"),
                        ("--val-every", "val_every"), ("--arch", "arch")):
        shown = re.search(re.escape(flag) + r" .*?\(default ([^ )]+) / ([^ )]+)\)", text)
        assert shown, (flag, text)
        cpu, gpu = shown.groups()
        typed = type(getattr(TrainConfig, field))
        assert typed(cpu) == CPU_PRESET[field] and typed(gpu) == getattr(TrainConfig, field), (flag, shown.group(0))
    assert f"(default {TrainConfig.ckpt_every})" in text and CPU_PRESET["ckpt_every"] == TrainConfig.ckpt_every
    assert "(default 0: in the training process / 4)" in text and (CPU_PRESET["workers"], TrainConfig.workers) == (0, 4)
    assert "(default 0)" in text and TrainConfig.seed == 0
