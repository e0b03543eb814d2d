"""Benchmark: sweep one operator over all K latent steps of a batch, with KV-cache prefix
reuse (`sweep_steps`, the intervened rollouts run in lock-step with the clean one) against
re-running every intervened rollout from the start. Target: >= 3x at K = 6.

Two read-out modes are timed: "final" (the answer after the last step: what necessity
needs) and "all" (the answer after every step: what the influence matrix needs).  The baseline
is re-running every intervened rollout from the start. Also timed: the opt-in
``batched_readout=True`` (1-token latent passes, every read-out in one final pass over
the shared cache with a mask), whose ratio is printed beside the default's.

    python bench/latent_cot.py [--k 6] [--batch 32] [--question-len 48] [--repeats 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from interventions.latent_cot import GaussianNoise, LatentRunner, LatentStats, sweep_steps  # noqa: E402


def build_model(d_model: int, n_layers: int, vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=4 * d_model,
                      num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=6)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--question-len", type=int, default=48)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    vocab = 256
    model = build_model(args.d_model, args.layers, vocab)
    runner = LatentRunner(model, bot_id=vocab - 2, eot_id=vocab - 1, answer_prefix_ids=[vocab - 3])
    gen = torch.Generator().manual_seed(0)
    question = torch.randint(0, vocab - 3, (args.batch, args.question_len), generator=gen)
    answer = torch.randint(0, vocab - 3, (args.batch, 1), generator=gen)
    kw = dict(n_latents=args.k, answer_ids=answer)
    report = {"k": args.k, "batch": args.batch, "question_len": args.question_len, "d_model": args.d_model,
              "layers": args.layers, "threads": args.threads}
    with torch.no_grad():
        stats = LatentStats.from_latents(runner.rollout(question, **kw).latents)
        op = GaussianNoise(stats, sigma=1.0)
        variants = {  # name: (reuse_prefix, batched_readout)
            "reuse": (True, False), "reuse_batched_readout": (True, True), "from_start": (False, False),
            "from_start_batched_readout": (False, True)}
        for readout in ("final", "all"):
            timings, results = {v: [] for v in variants}, {}
            for _ in range(args.repeats):
                for name, (reuse, batched) in variants.items():
                    t0 = time.perf_counter()
                    results[name] = sweep_steps(runner, question, operator=op, reuse_prefix=reuse, readout=readout,
                                                batched_readout=batched, **kw)
                    timings[name].append(time.perf_counter() - t0)
            cols = slice(None) if readout == "all" else slice(-1, None)
            diff = max((a.readout_logits[:, cols] - b.readout_logits[:, cols]).abs().max().item()
                       for a, b in zip(results["reuse"].intervened, results["from_start"].intervened))
            med = {name: statistics.median(t) for name, t in timings.items()}
            ratio = med["from_start"] / med["reuse"]
            report[readout] = {"reuse_s": med["reuse"], "from_start_s": med["from_start"],
                               "from_start_batched_readout_s": med["from_start_batched_readout"], "ratio": ratio,
                               "reuse_batched_readout_s": med["reuse_batched_readout"],
                               "ratio_batched_readout": med["from_start"] / med["reuse_batched_readout"],
                               "max_abs_logit_diff": diff}
            print(f"latent-CoT sweep over K={args.k} steps, read-out {readout!r}: prefix reuse {med['reuse'] * 1e3:.1f} ms, "
                  f"re-running from the start {med['from_start'] * 1e3:.1f} ms, ratio {ratio:.2f}x (target >= 3x); "
                  f"reuse with one batched read-out pass {med['from_start'] / med['reuse_batched_readout']:.2f}x; "
                  f"max |logit diff| over {'all read-outs' if readout == 'all' else 'the final read-out'} {diff:.2e}")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
