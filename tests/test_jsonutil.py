"""hooked.jsonutil: results with tensors, numpy values, paths and NaN become strict JSON."""

import json
import math
from pathlib import Path

import numpy as np
import torch

from hooked.jsonutil import to_jsonable, write_json


def test_to_jsonable_converts_every_kind_of_value():
    x = {1: torch.tensor([[1.0, 2.0]]), "np": np.arange(3), "scalar": np.float32(0.5), "t0": torch.tensor(7),
         "nan": float("nan"), "inf": [math.inf, -math.inf, 1.5], "path": Path("a/b"), "tuple": (np.int64(2), True),
         "nested": [{"k": torch.tensor([float("nan"), 3.0])}], "s": "text", "none": None}
    out = to_jsonable(x)
    assert out == {"1": [[1.0, 2.0]], "np": [0, 1, 2], "scalar": 0.5, "t0": 7, "nan": None, "inf": [None, None, 1.5],
                   "path": "a/b", "tuple": [2, True], "nested": [{"k": [None, 3.0]}], "s": "text", "none": None}
    assert type(out["np"][0]) is int and type(out["scalar"]) is float and type(out["tuple"][0]) is int
    json.dumps(out, allow_nan=False)  # strict JSON: raises on NaN/inf or an unknown type


def test_write_json_creates_folders_and_reads_back(tmp_path):
    path = write_json(tmp_path / "a" / "b.json", {"x": torch.ones(2), "y": float("nan")})
    assert json.loads(path.read_text()) == {"x": [1.0, 1.0], "y": None}
