"""What a run's results were measured from, for the scripts that commit results
(gpu_lab.py, cpu_bf16_bar.py): a command's output, and the checkout's commit."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parents[1]


def command_output(cmd: List[str]) -> str:
    """`cmd`'s stdout, stripped, run in the checkout; "" when it cannot run."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20,
                              cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_state() -> Tuple[str, bool]:
    """The checkout's commit, and whether tracked files differ from it."""
    return (command_output(["git", "rev-parse", "HEAD"]),
            bool(command_output(["git", "status", "--porcelain", "--untracked-files=no"])))
