"""Benchmark of the probes package.

1. Layer sweep (``probes.sweep_activations``: one standardisation per fold for all layers,
   warm-started lbfgs across layers, BLAS pinned to one thread; closed-form mass-mean / LDA
   vectorised over layers) against the naive loop -- one scikit-learn ``LogisticRegression()``
   fit per layer per fold with defaults -- on the same activations and folds.
2. Knowledge-entropy throughput (tokens/s, hooks on every ``mlp.hidden.L``) against a bare forward.

Usage::

    python bench/probes.py                       # synthetic [30, 1500, 576] stack + tiny model
    python bench/probes.py --model smollm2-135m-instruct --acts factual   # real activations

The naive loop is timed on ``--naive-layers`` layers and scaled to all layers (printed as such),
because on a shared CPU the default multi-threaded BLAS makes it very slow.
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


def synthetic(L=30, N=1500, d=576, seed=0):
    """Residual-like stack: shared low-rank structure, anisotropic noise and a concept direction
    whose strength grows with depth (so early layers are near chance and late ones separable)."""
    g = torch.Generator().manual_seed(seed)
    y = np.arange(N) % 2
    basis = torch.randn(32, d, generator=g) * torch.linspace(3, 0.3, 32)[:, None]
    v = torch.randn(d, generator=g)
    v /= v.norm()
    sign = torch.as_tensor(y * 2.0 - 1.0)[:, None]
    X = torch.empty(L, N, d)
    for layer in range(L):
        shared = torch.randn(N, 32, generator=g) @ basis
        X[layer] = shared + torch.randn(N, d, generator=g) + (layer / L) * 1.2 * sign * v
    return X, y, None


def real(model_name, dataset, n):
    import hooked
    model = hooked.load_model(model_name)
    ds = probes.datasets.load(dataset, n=n)
    acts = model.capture(ds.texts, sites="resid_post.*", batch_size=32, progress=True)
    return acts.stack("resid_post.*").float(), ds.labels, ds.groups


def naive_sweep(X, y, folds, layers, blas_threads=None, converged=False):
    """One LogisticRegression fit per layer per fold. Default: scikit-learn defaults on raw
    activations (max_iter=100, usually stops unconverged). ``converged``: the same estimator the
    sweep fits (StandardScaler + LogisticRegression(max_iter=1000)), fitted cold each time."""
    accs = np.zeros((len(layers), len(folds)))
    Xn = X.numpy()
    ctx = threadpool_limits(blas_threads, "blas") if blas_threads else warnings.catch_warnings()
    with ctx, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i, layer in enumerate(layers):
            for f, (tr, te) in enumerate(folds):
                if converged:
                    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
                else:
                    clf = LogisticRegression()
                clf.fit(Xn[layer][tr], y[tr])
                accs[i, f] = clf.score(Xn[layer][te], y[te])
    return accs


def bench_sweep(X, y, groups, cv, naive_layers, default_threads=True):
    L = X.shape[0]
    folds = make_folds(y, groups, cv, seed=0)
    rows = {}
    for method in ("logistic", "mass_mean", "lda"):
        t = time.perf_counter()
        res = probes.sweep_activations(X, y, groups, cv=cv, method=method, control=False)
        rows[method] = (time.perf_counter() - t, res)
    t = time.perf_counter()
    probes.sweep_activations(X, y, groups, cv=cv, method="logistic", control=True)
    with_control = time.perf_counter() - t
    layers = np.linspace(0, L - 1, naive_layers).round().astype(int)
    out = {}
    runs = [("naive (1 BLAS thread)", 1, False), ("converged naive (1 thread)", 1, True)]
    if default_threads:
        runs.insert(0, ("naive (default threads)", None, False))
    for label, threads, converged in runs:
        t = time.perf_counter()
        accs = naive_sweep(X, y, folds, layers, threads, converged)
        out[label] = ((time.perf_counter() - t) * L / len(layers), accs)
    print(f"\nLayer sweep: {L} layers x {X.shape[1]} examples x {X.shape[2]} dims, {cv}-fold")
    for method, (secs, res) in rows.items():
        print(f"  probes.sweep_activations {method:9s}: {secs:7.2f} s   peak acc {res.peak_acc:.3f} "
              f"(layer {res.peak_layer})")
    print(f"  probes.sweep_activations logistic + shuffled-label control: {with_control:7.2f} s")
    for label, (secs, accs) in out.items():
        print(f"  {label:24s}: {secs:7.2f} s (timed on {len(layers)} layers, scaled x{L / len(layers):.1f})"
              f"   acc at those layers {np.round(accs.mean(1), 3).tolist()}")
    for label, (ref, _) in out.items():
        ratios = ", ".join(f"{m} {ref / secs:.1f}x" for m, (secs, _) in rows.items())
        print(f"  speed-up vs {label:26s}: {ratios}")
    return rows, out


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
    ap.add_argument("--naive-layers", type=int, default=6)
    ap.add_argument("--model", default="tiny", help="'tiny' or a packaged name for the entropy bench")
    ap.add_argument("--acts", default=None, help="dataset name: capture real activations with --model")
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--skip-entropy", action="store_true")
    ap.add_argument("--skip-default-threads", action="store_true",
                    help="skip the naive loop with default BLAS threads (very slow on a busy CPU)")
    args = ap.parse_args(argv)
    if not args.skip_sweep:
        if args.acts:
            X, y, groups = real(args.model, args.acts, args.n)
        else:
            X, y, groups = synthetic(args.layers, args.n, args.d)
        bench_sweep(X, y, groups, args.cv, min(args.naive_layers, X.shape[0]),
                    default_threads=not args.skip_default_threads)
    if not args.skip_entropy:
        import hooked
        model = hooked.tiny_model("llama", seed=0) if args.model == "tiny" else hooked.load_model(args.model)
        texts = [t for name in probes.datasets.BUILTIN for t in probes.datasets.load(name).texts]
        bench_entropy(model, texts[:: max(1, len(texts) // args.texts)][: args.texts])


if __name__ == "__main__":
    main()
