"""Importing the library changes nothing the caller owns: the matplotlib backend stays as it was,
and figures are drawn without pyplot (headless PNGs, inline PNGs in Jupyter)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORT_EVERYTHING = """
import importlib, json, pkgutil, sys
import matplotlib
matplotlib.use("pdf")  # a backend no package would pick by itself
before = matplotlib.get_backend()
imported = []
for top in ("hooked", "probes", "interventions", "analyses"):
    pkg = importlib.import_module(top)
    imported.append(top)
    for info in pkgutil.walk_packages(pkg.__path__, top + "."):
        if info.name.endswith("__main__"):
            continue
        importlib.import_module(info.name)
        imported.append(info.name)
print(json.dumps({"before": before, "after": matplotlib.get_backend(), "imported": imported,
                  "pyplot": "matplotlib.pyplot" in sys.modules}))
"""


def test_importing_every_module_leaves_the_matplotlib_backend_alone():
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"probes.plots", "analyses.dpo.plots", "analyses.latent_cot.plots", "analyses.cli", "analyses.demo"} <= set(
        result["imported"])
    assert result["after"] == result["before"] == "pdf"


def test_figures_render_to_png_without_pyplot(tmp_path):
    code = f"""
import sys
import numpy as np
import probes
from analyses.latent_cot import plot_necessity
fig = probes.plot_knowledge_entropy([0, 10, 20], [3.0, 2.5, 2.0], np.ones((3, 2)), path={str(tmp_path / 'ke.png')!r})
png = fig._repr_png_()
assert png[:8] == b"\\x89PNG\\r\\n\\x1a\\n", png[:8]
plot_necessity({{"zero": {{"d_acc": [-0.5, -0.2], "kl": [1.0, 0.3]}}}}, {str(tmp_path / 'nec.png')!r})
import torch
from interventions.patching import PatchingResult
res = PatchingResult(["resid_post.0", "resid_post.1"], [0, 1, 2], torch.rand(2, 3), torch.rand(2, 3), 1.0, 0.0)
res.plot().savefig({str(tmp_path / 'patch.png')!r})
assert "matplotlib.pyplot" not in sys.modules, "a figure went through pyplot"
"""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("ke.png", "nec.png", "patch.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
