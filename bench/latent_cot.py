"""Benchmark: sweep one operator over all K latent steps of a batch, with KV-cache prefix
reuse (`sweep_steps`, the intervened rollouts run in lock-step with the clean one) against
re-running every intervened rollout from the start. Target: >= 3x at K = 6.

Two read-out modes are timed: "final" (the answer after the last step: what necessity
needs) and "all" (the answer after every step: what the influence matrix needs; each
pass then also carries the <eot>/answer tokens, which prefix reuse cannot share).

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
        for readout in ("final", "all"):
            timings, results = {True: [], False: []}, {}
            for _ in range(args.repeats):
                for reuse in (True, False):
                    t0 = time.perf_counter()
                    results[reuse] = sweep_steps(runner, question, operator=op, reuse_prefix=reuse, readout=readout,
                                                 **kw)
                    timings[reuse].append(time.perf_counter() - t0)
            diff = max((a.readout_logits[:, -1] - b.readout_logits[:, -1]).abs().max().item()
                       for a, b in zip(results[True].intervened, results[False].intervened))
            reuse_s, naive_s = statistics.median(timings[True]), statistics.median(timings[False])
            report[readout] = {"reuse_s": reuse_s, "from_start_s": naive_s, "ratio": naive_s / reuse_s,
                               "max_abs_logit_diff": diff}
            print(f"latent-CoT sweep over K={args.k} steps, read-out {readout!r}: prefix reuse {reuse_s * 1e3:.1f} ms, "
                  f"from start {naive_s * 1e3:.1f} ms, ratio {naive_s / reuse_s:.2f}x (target >= 3x); "
                  f"max |logit diff| {diff:.2e}")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
