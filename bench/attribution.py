"""Attribution patching vs exact activation patching on the packaged model.

Every ``attn_out`` and ``mlp_out`` site x real-token position on an indirect-object prompt
pair and a factual-recall pair: the time of exact patching (one forward per cell, batched)
against AtP (two forwards, one backward) and integrated gradients, in one process, and the
Pearson / Spearman correlation and top-10 overlap of each estimate with the exact cells
(target: AtP >= 20x faster).

Usage: python bench/attribution.py [--model smollm2-135m-instruct] [--ig-steps 4]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

import hooked  # noqa: E402
import interventions as iv  # noqa: E402

TASKS = {
    "indirect object": (["When Mary and John went to the store, John gave a drink to"],
                        ["When Mary and John went to the store, Mary gave a drink to"], (" Mary", " John")),
    "factual recall": (["The Eiffel Tower is located in the city of"],
                       ["The Colosseum is located in the city of"], (" Paris", " Rome")),
}


def _rank(x):
    return np.argsort(np.argsort(x))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--ig-steps", type=int, default=4)
    ap.add_argument("--backend", default="nnsight")
    args = ap.parse_args()
    model = hooked.load_model(args.model, backend=args.backend)
    sites = model.sites(["attn_out.*", "mlp_out.*"])
    print(f"model {model.name} ({args.backend}): {len(sites)} sites x each real-token position")
    for task, (clean, corrupted, answers) in TASKS.items():
        t = time.perf_counter()
        exact = iv.activation_patching(model, clean, corrupted, sites, answers=answers)
        t_exact = time.perf_counter() - t
        t = time.perf_counter()
        atp = iv.attribution_patching(model, clean, corrupted, sites, answers=answers)
        t_atp = time.perf_counter() - t
        t = time.perf_counter()
        ig = iv.attribution_patching(model, clean, corrupted, sites, answers=answers, method="ig",
                                     ig_steps=args.ig_steps)
        t_ig = time.perf_counter() - t
        e = exact.recovered.flatten().numpy()
        print(f"\n{task}: {exact.recovered.numel()} cells, clean-corrupted metric gap "
              f"{exact.clean_metric - exact.corrupted_metric:.3f}")
        print(f"  exact patching {t_exact:7.1f} s")
        top = set(np.argsort(-np.abs(e))[:10])
        for name, res, secs in (("atp", atp, t_atp), (f"ig (k={args.ig_steps})", ig, t_ig)):
            a = res.recovered.flatten().numpy()
            pear = float(np.corrcoef(a, e)[0, 1])
            spear = float(np.corrcoef(_rank(a), _rank(e))[0, 1])
            overlap = len(top & set(np.argsort(-np.abs(a))[:10])) / 10
            print(f"  {name:10} {secs:7.1f} s  speed-up {t_exact / secs:6.1f}x  Pearson {pear:.3f}  "
                  f"Spearman {spear:.3f}  top-10 overlap {overlap:.1f}")


if __name__ == "__main__":
    main()
