"""Capture throughput against a bare HF forward, TL run_with_cache and an nnsight trace.

Prints ratios measured in one process on the same batch:

1. capture of every ``resid_post`` site (both backends) vs a bare HF forward with the
   model's default attention (SDPA) (target >= 0.95x), vs TL ``run_with_cache`` on the
   bridge and vs an nnsight trace that saves the same layer outputs;
2. the same at T = 512 tokens per prompt (target >= 1.0x on both backends);
3. capture of one site at layer k vs a full forward (target <= (k+1)/L + 0.1).

Usage: python bench/capture.py [--model smollm2-135m-instruct] [--batch 8] [--repeats 5] [--tiny] [--long-batch 1]
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
from _timing import timed_all  # noqa: E402  (bench/ is on sys.path when run as a script)

PROMPT = "The quick brown fox jumps over the lazy dog while the scientists measure activations in every layer"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--long-batch", type=int, default=1, help="prompts of 512 tokens in the long-context run")
    ap.add_argument("--tiny", action="store_true", help="use a tiny random llama (smoke run)")
    args = ap.parse_args()
    torch.manual_seed(0)

    load = (lambda be: hooked.tiny_model("llama", backend=be, n_layers=6)) if args.tiny else (
        lambda be: hooked.load_model(args.model, backend=be))
    tl, nn = load("tl"), load("nnsight")
    prompts = [" ".join(PROMPT.split()[: 10 + i]) for i in range(args.batch)]
    enc = tl.tokenize(prompts)
    n_tokens = int(enc["attention_mask"].sum())
    L = tl.n_layers

    # a bare transformers model with the same weights, no bridge, no nnsight
    from transformers import AutoModelForCausalLM

    bare = AutoModelForCausalLM.from_config(nn.hf_model.config).eval()  # default attention: SDPA
    bare.load_state_dict(nn.hf_model.state_dict())
    pos = (enc["attention_mask"].cumsum(-1) - 1).masked_fill(enc["attention_mask"] == 0, 1)

    def bare_forward():
        with torch.inference_mode():
            bare(**enc, position_ids=pos, use_cache=False)

    names = [f"blocks.{i}.hook_resid_post" for i in range(L)]
    bridge = tl._backend.bridge

    def tl_cache():
        with torch.inference_mode():
            bridge.run_with_cache(enc["input_ids"], attention_mask=enc["attention_mask"], names_filter=names)

    lm = nn._backend.lm

    def nn_trace():
        with torch.inference_mode():
            with lm.trace({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}):
                _ = [lm.model.layers[i].output.save() for i in range(L)]

    t = timed_all({
        "bare": bare_forward,
        "cap_tl": lambda: tl.capture(prompts, "resid_post.*", batch_size=args.batch),
        "cap_nn": lambda: nn.capture(prompts, "resid_post.*", batch_size=args.batch),
        "tl_cache": tl_cache,
        "nn_trace": nn_trace,
    }, args.repeats)
    t_bare, t_cap_tl, t_cap_nn, t_tl_cache, t_nn = (t[k] for k in ("bare", "cap_tl", "cap_nn", "tl_cache", "nn_trace"))

    print(f"model {tl.name}: {L} layers, batch {args.batch}, {n_tokens} real tokens, best of {args.repeats} interleaved")
    print(f"bare HF forward            {n_tokens / t_bare:9.0f} tok/s")
    rows = [
        ("capture resid_post.* (tl)", t_cap_tl),
        ("capture resid_post.* (nnsight)", t_cap_nn),
        ("TL run_with_cache (same saves)", t_tl_cache),
        ("nnsight trace (same saves)", t_nn),
    ]
    for name, t in rows:
        print(f"{name:32} {n_tokens / t:9.0f} tok/s   ratio vs bare forward {t_bare / t:5.2f}x (target >= 0.95 for capture)")
    print(f"capture(tl) vs TL run_with_cache: {t_tl_cache / t_cap_tl:5.2f}x;  capture(nnsight) vs nnsight trace: {t_nn / t_cap_nn:5.2f}x")

    long_prompt = " ".join([PROMPT] * 40)
    ids = tl.tokenizer(long_prompt, add_special_tokens=False)["input_ids"][: min(511, tl.max_length - 12)]
    long_text = tl.tokenizer.decode(ids, skip_special_tokens=True)
    long_enc = tl.tokenize([long_text] * args.long_batch)
    t_long = long_enc["input_ids"].shape[1]

    def bare_long():
        with torch.inference_mode():
            bare(**long_enc, use_cache=False)

    t = timed_all({
        "bare": bare_long,
        "cap_tl": lambda: tl.capture([long_text] * args.long_batch, "resid_post.*", batch_size=args.long_batch),
        "cap_nn": lambda: nn.capture([long_text] * args.long_batch, "resid_post.*", batch_size=args.long_batch),
    }, args.repeats)
    print(f"\nT = {t_long} tokens x batch {args.long_batch}: capture of every resid_post vs a bare SDPA forward "
          "(target >= 1.0x)")
    for backend, key in (("tl", "cap_tl"), ("nnsight", "cap_nn")):
        print(f"  {backend:8} {t_long * args.long_batch / t[key]:8.0f} tok/s   ratio {t['bare'] / t[key]:5.2f}x")

    print("\nearly stop: one site at layer k vs a full forward (target <= (k+1)/L + 0.1)")
    ks = sorted({0, L // 4, L // 2, L - 1})
    fns = {"bare": bare_forward}
    for k in ks:
        for m in (tl, nn):
            fns[(k, m.backend)] = (lambda m=m, k=k: m.capture(prompts, f"resid_post.{k}", batch_size=args.batch))
    t = timed_all(fns, args.repeats)
    for k in ks:
        for backend in ("tl", "nnsight"):
            bound = (k + 1) / L + 0.1
            ratio = t[(k, backend)] / t["bare"]
            print(f"  k={k:2d} {backend:8} time ratio {ratio:5.2f}  bound {bound:4.2f}  {'ok' if ratio <= bound else 'MISS'}")


if __name__ == "__main__":
    main()
