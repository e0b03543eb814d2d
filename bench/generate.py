"""Generation speed: ``HookedModel.generate_ids`` on both backends vs plain ``transformers`` ``generate``.

Same weights, greedy, batch 4 (left-padded prompts of different lengths), 32 new tokens, no
hooks and then with one steering hook; every contender timed in one process, interleaved
best-of (target: >= 0.95x plain generate without hooks, on both backends). Outputs are
checked equal before timing.

Usage: python bench/generate.py [--model smollm2-135m-instruct] [--new 32] [--repeats 3] [--tiny]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

import hooked  # noqa: E402
from _timing import timed_all  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time, in a small village by the sea,",
           "def fibonacci(n):", "The three primary colours are"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="use a tiny random llama (smoke run)")
    args = ap.parse_args()
    load = (lambda be: hooked.tiny_model("llama", backend=be, n_layers=4)) if args.tiny else (
        lambda be: hooked.load_model(args.model, backend=be))
    tl, nn = load("tl"), load("nnsight")

    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_config(nn.hf_model.config).eval()  # default attention (SDPA)
    plain.load_state_dict(nn.hf_model.state_dict())
    enc = tl.tokenize(PROMPTS)
    pad = tl.tokenizer.pad_token_id

    def hf_generate():
        with torch.inference_mode():
            out = plain.generate(**enc, max_new_tokens=args.new, do_sample=False, pad_token_id=pad, eos_token_id=None)
        return out[:, enc["input_ids"].shape[1]:].tolist()

    want = hf_generate()
    for m in (tl, nn):
        got = m.generate_ids(PROMPTS, max_new_tokens=args.new, stop_at_eos=False)
        print(f"{m.backend}: outputs equal plain generate: {got == want}")

    vec = torch.randn(tl.d_model, generator=torch.Generator().manual_seed(0)) * 0.5

    def steered(m):
        def run():
            with m.hooks({f"resid_post.{m.n_layers // 2}": lambda act, ctx: act + vec}):
                m.generate_ids(PROMPTS, max_new_tokens=args.new, stop_at_eos=False)
        return run

    t = timed_all({
        "hf": hf_generate,
        "tl": lambda: tl.generate_ids(PROMPTS, max_new_tokens=args.new, stop_at_eos=False),
        "nnsight": lambda: nn.generate_ids(PROMPTS, max_new_tokens=args.new, stop_at_eos=False),
        "tl+hook": steered(tl),
        "nnsight+hook": steered(nn),
    }, args.repeats)
    n = len(PROMPTS) * args.new
    print(f"model {tl.name}: batch {len(PROMPTS)} x {args.new} new tokens, greedy, best of {args.repeats} interleaved")
    print(f"plain transformers generate   {n / t['hf']:7.1f} tok/s")
    for k in ("tl", "nnsight", "tl+hook", "nnsight+hook"):
        note = " (target >= 0.95x)" if "+" not in k else ""
        print(f"generate_ids {k:15}  {n / t[k]:7.1f} tok/s   ratio vs plain {t['hf'] / t[k]:5.2f}x{note}")


if __name__ == "__main__":
    main()
