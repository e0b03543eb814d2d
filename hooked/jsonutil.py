"""Turn results (tensors, numpy values, paths, NaN) into plain JSON, for every package's reports.

``json.dumps`` refuses tensors and numpy scalars and writes ``NaN``/``Infinity``, which
are not JSON; :func:`to_jsonable` makes a copy that any JSON reader accepts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch


def to_jsonable(x):
    """A JSON-safe copy of ``x``: tensors and arrays become (nested) lists, numpy and torch
    scalars become Python numbers, non-finite floats become ``None``, paths become strings,
    dict keys become strings. Anything else is returned as it is."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (torch.Tensor, np.ndarray, np.generic)):
        return to_jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def write_json(path, obj, indent: int = 2) -> Path:
    """Write ``to_jsonable(obj)`` to ``path`` (parent folders are created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(obj), indent=indent))
    return path
