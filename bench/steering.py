"""Generation throughput with steering vectors attached vs unsteered generation.

Same process, same prompts, KV cache on, greedy, EOS ignored (every run produces
exactly ``batch x max_new_tokens`` tokens). Contenders, timed round-robin and
best-of-``repeats`` (the least noisy estimate on a shared machine):

* unsteered ``model.generate_ids``
* steering on 1 layer  (``resid_post.{L/2}``)
* steering on 3 layers (``resid_post.{L/2 - 2, L/2, L/2 + 2}``)
* a no-op hook at ``resid_post.{L/2}`` (the cost of the hook plumbing in ``hooked``)

Target: steered tokens/s >= 0.95 x unsteered. The vectors are random with the norm
of a typical sentiment vector (throughput does not depend on their content).

Usage: python bench/steering.py [--model smollm2-135m-instruct] [--batch 4] [--new 32] [--repeats 3] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

import hooked  # noqa: E402
from _timing import timed_all  # noqa: E402  (bench/ is on sys.path when run as a script)
import interventions as iv  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--backend", default="tl", choices=["tl", "nnsight"])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new", type=int, default=32, help="new tokens per prompt")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--norm", type=float, default=10.0, help="norm of each random steering vector")
    ap.add_argument("--tiny", action="store_true", help="tiny random llama (smoke run)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = (
        hooked.tiny_model("llama", n_layers=6, backend=args.backend)
        if args.tiny
        else hooked.load_model(args.model, backend=args.backend)
    )
    mid = model.n_layers // 2
    g = torch.Generator().manual_seed(0)

    def rand_vec(layers):
        return iv.SteeringVector(
            {f"resid_post.{l}": iv.operators.unit(torch.randn(model.d_model, generator=g)) * args.norm for l in layers}
        )

    one, three = rand_vec([mid]), rand_vec([mid - 2, mid, mid + 2])
    prompts = (iv.data.NEUTRAL_PROMPTS * 4)[: args.batch]
    kw = dict(max_new_tokens=args.new, use_cache=True, do_sample=False, stop_at_eos=False)

    def run(vec=None):
        if vec is None:
            return model.generate_ids(prompts, **kw)
        with vec.apply(model, multiplier=1.0, positions="all"):
            return model.generate_ids(prompts, **kw)

    def run_noop():  # the hook plumbing alone: a hook that returns None at the same site
        with model.hooks({f"resid_post.{mid}": lambda act, ctx: None}):
            return model.generate_ids(prompts, **kw)

    fns = {
        "unsteered": lambda: run(),
        "noop_hook_1_layer": run_noop,
        "steer_1_layer": lambda: run(one),
        "steer_3_layers": lambda: run(three),
    }
    secs = timed_all(fns, args.repeats)
    n_tok = args.batch * args.new
    out = {
        "model": model.name,
        "backend": args.backend,
        "batch": args.batch,
        "new_tokens": args.new,
        "repeats": args.repeats,
        "tokens_per_s": {k: n_tok / v for k, v in secs.items()},
        "ratio_1_layer": secs["unsteered"] / secs["steer_1_layer"],
        "ratio_3_layers": secs["unsteered"] / secs["steer_3_layers"],
        "ratio_noop_hook": secs["unsteered"] / secs["noop_hook_1_layer"],
        "target": 0.95,
    }
    for k, v in out["tokens_per_s"].items():
        print(f"{k:16s} {v:8.1f} tokens/s")
    print(f"ratio steered/unsteered: 1 layer {out['ratio_1_layer']:.3f}x, 3 layers {out['ratio_3_layers']:.3f}x (target >= 0.95x)")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
