"""Which code made a result: the package version and the checkout's git commit.

Results files, exports and manifests record both, so that a number can be traced to the
code that computed it. Kept apart from magncli/__init__.py so that any module can ask
without importing the package's whole API.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Optional

__version__ = "0.1.0"


def git_commit() -> Optional[str]:
    """The checkout's commit (with -dirty when it has changes), or None outside git."""
    try:
        result = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None
