"""The Python benches' shared bootstrap: re-run the calling script inside benches/.venv, creating
the venv and installing what it needs on first use. Nothing in the Rust build or tests uses it."""
import os
import subprocess
import sys
from pathlib import Path

VENV = Path(__file__).resolve().parent / ".venv"


def ensure_venv(script, modules, packages):
    """Re-executes `script` inside benches/.venv unless already there. When `modules` (a comma
    list, e.g. "torch, psutil") do not import, installs `packages` with pip first."""
    if os.environ.get("KD_TORCH_VENV") == "1":
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    probe = subprocess.run([str(python), "-c", f"import {modules}"], capture_output=True)
    if probe.returncode != 0:
        subprocess.check_call([str(python), "-m", "pip", "install", "--quiet", *packages])
    env = dict(os.environ, KD_TORCH_VENV="1")
    os.execve(str(python), [str(python), script, *sys.argv[1:]], env)
