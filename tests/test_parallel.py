"""magncli/parallel.py: the OpenMP wait policy that lets several magn processes share
cores (issue 18), set by the command line before torch loads and never over the user's;
the library (`import magncli`) leaves a program's environment alone."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _child(code: str, **env) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter importing this checkout's magncli, with
    OMP_WAIT_POLICY taken out of the environment unless given in `env`, and libgomp
    asked to print its settings (OMP_DISPLAY_ENV=verbose) on stderr."""
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    base.update(OMP_DISPLAY_ENV="verbose", OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=base, capture_output=True,
                          text=True, timeout=120)


def _spin_count(stderr: str):
    """libgomp's GOMP_SPINCOUNT as it printed it: 0 means passive waiting."""
    for line in stderr.splitlines():
        if line.strip().startswith("GOMP_SPINCOUNT"):
            return line.split("=")[1].strip().strip("'")
    return None       # not GNU OpenMP: nothing to check beyond the variable


def test_a_fresh_magn_process_waits_passively():
    res = _child("import os, magncli.cli.app, torch; torch.ones(2).sum(); print(os.environ.get('OMP_WAIT_POLICY'))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "PASSIVE"
    assert _spin_count(res.stderr) in ("0", None)      # in effect in the OpenMP runtime


def test_magn_train_keeps_openmps_spinning_default():
    # Passive waiting halved a real training run at 2 threads (parallel.py's docstring).
    code = ("import sys; sys.argv = ['magn'] + {args!r}; import os, magncli.cli.app, torch; "
            "torch.ones(2).sum(); print(os.environ.get('OMP_WAIT_POLICY'))")
    res = _child(code.format(args=["train", "--resume", "--out", "run"]))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "None"
    assert _spin_count(res.stderr) not in ("0",)
    for args in (["restore", "photo.png"], ["eval", "--sigma", "25"], []):
        res = _child(code.format(args=args))
        assert res.stdout.strip() == "PASSIVE", (args, res.stderr)


def test_the_root_command_takes_no_option_with_a_value():
    # command_of takes the first word that is not an option for the command: a root
    # option with a value (`magn --log FILE train`) would be mistaken for it.
    import typer.main

    from magncli.cli.app import app
    root = typer.main.get_command(app)
    assert root.params and all(getattr(p, "is_flag", False) for p in root.params), root.params


def test_a_users_wait_policy_is_kept():
    res = _child("import os, magncli.cli.app, torch; print(os.environ['OMP_WAIT_POLICY'])",
                 OMP_WAIT_POLICY="ACTIVE")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ACTIVE"
    assert _spin_count(res.stderr) in ("30000000000", None)


def test_no_policy_is_claimed_once_torch_was_loaded_first():
    # The runtime read its settings when torch loaded: setting the variable then would
    # say something that is not in effect.
    res = _child("import os, torch, magncli.cli.app; print(os.environ.get('OMP_WAIT_POLICY'))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "None"


def test_the_policy_is_set_before_torch_where_the_command_line_starts():
    text = (REPO / "magncli" / "cli" / "app.py").read_text()
    assert text.index("set_default_wait_policy(sys.argv[1:])") < min(
        text.index(m) for m in ("from magncli.cli import", "import typer", "import torch") if m in text)
    # `python -m magncli` goes through the same module.
    assert "from magncli.cli.app import main" in (REPO / "magncli" / "__main__.py").read_text()


def test_importing_the_library_leaves_the_environment_alone():
    # A program that imports magncli keeps its own OpenMP settings, torch loaded or not.
    res = _child("""
        import os
        before = dict(os.environ)
        import magncli
        print(dict(os.environ) == before)
        magncli.InferenceOptions, magncli.load_model        # the engine: torch loads
        import sys
        print("torch" in sys.modules, os.environ.get("OMP_WAIT_POLICY"))
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "True", "None"]
