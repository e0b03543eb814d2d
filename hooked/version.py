"""The policylens version written into every saved artifact's metadata."""

from __future__ import annotations

import functools
import re
from pathlib import Path


@functools.lru_cache(maxsize=1)
def library_version() -> str:
    """The policylens version (installed metadata, else the repository's pyproject.toml)."""
    try:
        from importlib.metadata import version

        return version("policylens")
    except Exception:  # running from a checkout that is not installed
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        if pyproject.exists():
            m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M)
            if m:
                return m.group(1)
        return "unknown"
