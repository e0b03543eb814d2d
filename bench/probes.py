"""Benchmark of the probes package.

1. Layer sweep (``probes.sweep_activations``: every layer, fold and label set in one batched
   L-BFGS run, :mod:`probes.solvers`) against the converged scikit-learn loop a researcher would
   write -- ``StandardScaler`` + ``LogisticRegression(max_iter=5000)`` per layer per fold -- on one
   core and on all cores with joblib, timed interleaved in this process (plus CPU seconds of the
   sweep and the one-core loop); the layer x position sweep likewise (real activations: the
   last ``--positions`` tokens of each text; synthetic: independent draws with the same labels).
2. Knowledge-entropy throughput (tokens/s, hooks on every ``mlp.hidden.L``) against a bare forward.

Usage::

    python bench/probes.py                       # synthetic [30, 1500, 576] stack + tiny model
    python bench/probes.py --model smollm2-135m-instruct --acts factual   # real activations
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

# this file is named like the package it measures: drop its own folder from the import path
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import probes  # noqa: E402
from probes.cv import make_folds  # noqa: E402
from probes.datasets import synthetic_stack  # noqa: E402


def synthetic(L=30, N=1500, d=576, seed=0, positions=3):
    """Residual-like stack whose concept strength grows with depth (probes.datasets.synthetic_stack);
    ``positions`` stacks (independent draws, the same labels; the first is the layer sweep's) stand in for
    token positions."""
    draws = [synthetic_stack(L, N, d, rank=32, strength=1.2, seed=seed + p) for p in range(positions)]
    stacks = [X for X, _ in draws]
    return stacks[0], draws[0][1], None, stacks


def real(model_name, dataset, n, positions=3):
    """``resid_post`` of every layer at the last ``positions`` tokens of each text (the last one is the
    layer sweep's stack)."""
    import hooked
    model = hooked.load_model(model_name)
    ds = probes.datasets.load(dataset, n=n)
    stacks, _, _, _ = probes.sweep.position_stacks(model, ds, "resid_post.*", list(range(-positions, 0)),
                                                   batch_size=32, progress=True)             # one capture
    return stacks[-1], ds.labels, ds.groups, stacks


def converged_loop(X, y, groups, cv, n_jobs=1, tol=1e-4, folds=None):
    """What a researcher writes: StandardScaler + LogisticRegression(max_iter=5000) per layer per
    fold, BLAS pinned to one thread per worker; ``n_jobs`` > 1 spreads layers over cores (joblib).
    The folds are made once (scikit-learn's (group-)stratified splitter, the sweep's own folds), as
    the sweep makes them: both timings include that.
    ``tol``: scikit-learn's default 1e-4 (``tol=1e-8``: the exact optimum, for the accuracy check)."""
    from joblib import Parallel, delayed
    folds = make_folds(y, groups, cv, seed=0) if folds is None else folds

    def one_layer(Xl):
        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return [make_pipeline(StandardScaler(), LogisticRegression(max_iter=100000 if tol < 1e-4 else 5000, tol=tol))
                    .fit(Xl[tr], y[tr]).score(Xl[te], y[te]) for tr, te in folds]
    Xn = X.numpy()
    if n_jobs == 1:
        return np.array([one_layer(Xn[i]) for i in range(len(Xn))])
    return np.array(Parallel(n_jobs=n_jobs)(delayed(one_layer)(Xn[i]) for i in range(len(Xn))))


def loop_positions(stacks, y, groups, cv, n_jobs=1):
    """The converged loop at every position, the folds made once (as the position sweep makes them)."""
    folds = make_folds(y, groups, cv, seed=0)
    return [converged_loop(S, y, groups, cv, n_jobs=n_jobs, folds=folds) for S in stacks]


def bench_sweep(X, y, groups, cv, stacks, repeats=2):
    """Ratios of the batched sweep against the converged loop (one core, and all cores with
    joblib), timed interleaved in this process; the layer x position sweep likewise."""
    import os
    sys.path.append(_HERE)
    from _timing import timed_all
    cores = os.cpu_count()
    res = {}
    fns = {"probes.sweep_activations": lambda: res.__setitem__("ours", probes.sweep_activations(
               X, y, groups, cv=cv, method="logistic", control=False)),
           "converged loop, 1 core": lambda: res.__setitem__("loop", converged_loop(X, y, groups, cv)),
           f"converged loop, joblib x{cores}": lambda: converged_loop(X, y, groups, cv, n_jobs=cores)}
    t = timed_all(fns, repeats)
    diff = np.abs(res["ours"].acc_mean - res["loop"].mean(1))
    print(f"\nLayer sweep (logistic): {X.shape[0]} layers x {X.shape[1]} examples x {X.shape[2]} dims, "
          f"{cv}-fold, best of {repeats}")
    for k, v in t.items():
        print(f"  {k:32s}: {v:7.2f} s")
    ours = t["probes.sweep_activations"]
    for k in list(t)[1:]:
        print(f"  speed-up vs {k:32s}: {t[k] / ours:5.1f}x")
    exact = converged_loop(X, y, groups, cv, tol=1e-8).mean(1)
    print(f"  max |accuracy difference| per layer vs the converged loop: {diff.max():.4f}; "
          f"vs scikit-learn at tol=1e-8: {np.abs(res['ours'].acc_mean - exact).max():.4f} "
          f"(scikit-learn's own default-tol loop vs tol=1e-8: {np.abs(res['loop'].mean(1) - exact).max():.4f})")
    t5 = time.perf_counter()
    tight = probes.sweep_activations(X, y, groups, cv=cv, method="logistic", control=False, tol=1e-5)
    t5 = time.perf_counter() - t5
    print(f"  probes.sweep_activations(tol=1e-5): {t5:.2f} s ({t['converged loop, 1 core'] / t5:.1f}x the 1-core loop), "
          f"max |accuracy difference| vs scikit-learn at tol=1e-8: {np.abs(tight.acc_mean - exact).max():.4f}")
    # CPU seconds of this process: on a machine shared with other jobs, less noisy than wall time
    cpu = {}
    for k in ("probes.sweep_activations", "converged loop, 1 core"):
        c = time.process_time()
        fns[k]()
        cpu[k] = time.process_time() - c
    print(f"  CPU time: sweep {cpu['probes.sweep_activations']:.2f} s, loop {cpu['converged loop, 1 core']:.2f} s "
          f"-> {cpu['converged loop, 1 core'] / cpu['probes.sweep_activations']:.1f}x")
    # layer x position: the stacks of the last P token positions
    positions = len(stacks)
    fns = {"probes.position_sweep_from_stacks": lambda: res.__setitem__("pos", probes.position_sweep_from_stacks(
               stacks, y, groups, positions=list(range(-positions, 0)), cv=cv, method="logistic")),
           "converged loop, 1 core": lambda: res.__setitem__("pos_loop", loop_positions(stacks, y, groups, cv)),
           f"converged loop, joblib x{cores}": lambda: loop_positions(stacks, y, groups, cv, n_jobs=cores)}
    t = timed_all(fns, 1)
    print(f"Layer x position sweep (logistic, {positions} positions)")
    ours = t["probes.position_sweep_from_stacks"]
    for k in list(t)[1:]:
        print(f"  speed-up vs {k:32s}: {t[k] / ours:5.1f}x  ({t[k]:.2f} s vs {ours:.2f} s)")
    loop_acc = np.stack([a.mean(1) for a in res["pos_loop"]], 1)                  # [layers, positions]
    print("  max |accuracy difference| per (layer, position) vs the converged loop, per position: "
          + ", ".join(f"{p}: {d:.4f}" for p, d in zip(range(-positions, 0), np.abs(res["pos"].acc_mean - loop_acc).max(0))))
    return t


def bench_entropy(model, texts, batch_size=8, repeat=2):
    enc = [model.tokenize(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    n_tokens = sum(int(e["attention_mask"].sum()) for e in enc)

    def bare():
        with torch.inference_mode():
            for e in enc:
                model.forward(e["input_ids"], e["attention_mask"])

    bare()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        bare()
    t_bare = (time.perf_counter() - t) / repeat
    t = time.perf_counter()
    for _ in range(repeat):
        ke = probes.knowledge_entropy(model, texts, batch_size=batch_size)
    t_ke = (time.perf_counter() - t) / repeat
    print(f"\nKnowledge entropy on {model.name}: {len(texts)} texts, {n_tokens} tokens, batch {batch_size}")
    print(f"  bare forward      : {n_tokens / t_bare:9.0f} tokens/s")
    print(f"  knowledge_entropy : {n_tokens / t_ke:9.0f} tokens/s  (total {ke.total:.3f} nats)")
    print(f"  ratio knowledge_entropy / bare time = {t_ke / t_bare:.2f}x")
    return t_bare, t_ke


def main(argv=None):
    ap = argparse.ArgumentParser(description="probes benchmark")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--cv", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--positions", type=int, default=3)
    ap.add_argument("--model", default="tiny", help="'tiny' or a packaged name for the entropy bench")
    ap.add_argument("--acts", default=None, help="dataset name: capture real activations with --model")
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-entropy", action="store_true")
    args = ap.parse_args(argv)
    if not args.skip_sweep:
        if args.acts:
            X, y, groups, stacks = real(args.model, args.acts, args.n, args.positions)
        else:
            X, y, groups, stacks = synthetic(args.layers, args.n, args.d, positions=args.positions)
        bench_sweep(X, y, groups, args.cv, stacks, repeats=args.repeats)
    if not args.skip_entropy:
        import hooked
        model = hooked.tiny_model("llama", seed=0) if args.model == "tiny" else hooked.load_model(args.model)
        texts = [t for name in probes.datasets.BUILTIN for t in probes.datasets.load(name).texts]
        bench_entropy(model, texts[:: max(1, len(texts) // args.texts)][: args.texts])


if __name__ == "__main__":
    main()
