"""Virtual environments of their own for client SDKs the gateway's environment cannot hold,
each made once from a requirements file (pip from PyPI) and made again when the file changes."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

VENVS = Path(__file__).parent.parent.parent / ".venv"


def client_venv(requirements: Path, name: str) -> Path:
    """The interpreter of ``.venv/NAME``, installed from ``requirements`` if it is not yet."""
    where = VENVS / name
    stamp = where / requirements.name
    binary = where / "bin" / "python"
    wanted = requirements.read_text(encoding="utf-8")
    if not binary.exists() or not stamp.exists() or stamp.read_text(encoding="utf-8") != wanted:
        venv.create(where, with_pip=True, clear=True)
        subprocess.run([str(binary), "-m", "pip", "install", "--quiet",
                        "--disable-pip-version-check", "-r", str(requirements)],
                       check=True, timeout=300)  # fmt: skip
        stamp.write_text(wanted, encoding="utf-8")
    return binary
