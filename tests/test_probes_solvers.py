"""Batched probe solvers: the sweep's accuracy equals the converged scikit-learn loop."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from probes import make_folds, sweep_activations
from probes.datasets import synthetic_stack
from probes.solvers import closed_form, fit_logistic_folds


def residual_like(L=5, n=160, d=24, seed=0):
    """Anisotropic, offset, low-rank-plus-noise layers with a concept of growing strength."""
    return synthetic_stack(L, n, d, rank=6, strength=0.6 * L, offset=20.0, seed=seed, scales=(4.0, 0.5))


def fold_masks(y, cv, seed=0):
    """Stratified folds and their boolean training-row masks ``[cv, N]``."""
    folds = make_folds(y, None, cv, seed=seed)
    masks = np.zeros((cv, len(y)), bool)
    for f, (tr, _) in enumerate(folds):
        masks[f, tr] = True
    return folds, masks


def sklearn_loop(X, y, folds, C=1.0):
    acc = np.zeros((X.shape[0], len(folds)))
    with threadpool_limits(1, "blas"):  # tiny fits: threads only add contention
        _fit_all(X, y, folds, C, acc)
    return acc


def _fit_all(X, y, folds, C, acc):
    for layer in range(X.shape[0]):
        for f, (tr, te) in enumerate(folds):
            clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
            clf.fit(X[layer][tr].numpy(), y[tr])
            acc[layer, f] = clf.score(X[layer][te].numpy(), y[te])


def test_accuracy_equals_converged_sklearn_loop_per_layer():
    """Per layer, the sweep's test predictions equal the converged scikit-learn loop's but for at most one
    borderline example over all folds: both stop at the same gradient test (gtol 1e-4), short of the exact
    optimum by different amounts, so an example scored within that error of zero can fall either way (with 160
    examples one such example is 0.00625 of a layer's mean accuracy; on the real-activation bench, 320-480
    examples, the sweep is closer to scikit-learn's exact optimum than scikit-learn's own default loop)."""
    n = 160
    for seed, C in ((0, 1.0), (1, 0.1), (2, 10.0)):
        X, y = residual_like(n=n, seed=seed)
        res = sweep_activations(X, y, cv=5, method="logistic", C=C, control=False, seed=seed)
        ref = sklearn_loop(X, y, make_folds(y, None, 5, seed=seed), C=C)
        flipped = np.abs(res.acc_mean - ref.mean(1)) * n  # mean over 5 folds of n/5 examples: examples differing
        assert flipped.max() <= 1 + 1e-9, (seed, C, res.acc_mean, ref.mean(1))


@pytest.mark.parametrize("n,d,bound", [(120, 10, "auto"), (50, 80, "woodbury"), (50, 80, "dense"),
                                       (40, 200, "auto"), (300, 120, "lowrank"), (50, 80, "none")])
def test_logistic_solution_matches_sklearn_coefficients(n, d, bound):
    """The bound's kinds (low-rank, dense, per-fold Woodbury) and the identity reach scikit-learn's
    optimum (the identity alone stops at the same gradient test further from it on this ill-conditioned problem,
    as scikit-learn's own L-BFGS does: it is held to a tighter tol here)."""
    X, y = residual_like(L=2, n=n, d=d, seed=3)
    folds, masks = fold_masks(y, 4)
    tol = 3e-5 if bound == "none" else 1e-4
    coef, intercept, n_iter, converged = fit_logistic_folds(X, y[None], masks, C=0.5, tol=tol, bound=bound)
    assert bool(converged.all())
    for layer in range(2):
        for f, (tr, _) in enumerate(folds):
            ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, tol=1e-10, max_iter=10000))
            ref.fit(X[layer][tr].numpy().astype(np.float64), y[tr])
            sc, lr = ref
            raw = lr.coef_[0] / sc.scale_
            np.testing.assert_allclose(coef[layer, f, 0].numpy(), raw, rtol=5e-3, atol=5e-3)
            b = lr.intercept_[0] - raw @ sc.mean_
            assert abs(float(intercept[layer, f, 0]) - b) < 5e-3 * (1 + abs(b))


def test_the_bound_is_carried_into_each_folds_coordinates():
    """Each fold standardises by its own training rows; the layer's bound is scaled by sd_fold / sd_layer on
    both sides. Two held-out outlier rows shrink fold 0's sd of 20 features far below the layer's: unscaled,
    the bound then overstated their curvature and took 130-200 iterations on fold 0 (the identity: 55-64); in
    the fold's coordinates it beats the identity there as on the other folds."""
    X, y = residual_like(L=3, n=100, d=120, seed=0)
    folds, masks = fold_masks(y, 4)
    X = X.clone()
    X[:, folds[0][1][:2], :20] += 40 * X[:, :, :20].std(1, keepdim=True)
    ident = fit_logistic_folds(X, y[None], masks, bound="none", workers=1)[2][..., 0]
    for bound in ("lowrank", "dense"):
        it = fit_logistic_folds(X, y[None], masks, bound=bound, workers=1)[2][..., 0]
        assert bool((it[:, 0] < ident[:, 0]).all()), (bound, it, ident)
        assert int(it[:, 1:].max()) <= 12 < int(ident[:, 1:].min()), (bound, it, ident)


@pytest.mark.parametrize("rank", [4, 64])
def test_lowrank_bound_is_the_bounds_inverse_on_its_top_directions(rank):
    """``P = U diag(1/(e_i + lam)) U^T + (I - U U^T)/(e_{r+1} + lam)`` from the exact eigendecomposition of
    ``Xs^T Xs / (4N)``; with r >= d - 1 it is the exact inverse ``B^-1``."""
    from probes.preconditioners import boehning_dense, boehning_lowrank

    g = torch.Generator().manual_seed(0)
    n, d = 200, 24
    X = torch.randn(2, n, d, generator=g) @ torch.diag(torch.logspace(1, -1, d)) @ torch.linalg.qr(
        torch.randn(d, d, generator=g)).Q + 3.0
    Xc = X - X.mean(1, keepdim=True)
    sd = Xc.pow(2).mean(1, keepdim=True).sqrt()
    lam = 1.0 / n
    Xs = (Xc / sd).double()
    e, U = torch.linalg.eigh(Xs.transpose(1, 2) @ Xs / (4 * n))
    e, U = e.flip(-1), U.flip(-1)
    r = min(rank, d - 1)
    Ur = U[..., :r]
    ref = Ur @ torch.diag_embed(1 / (e[:, :r] + lam)) @ Ur.transpose(1, 2) + (
        torch.eye(d, dtype=torch.float64) - Ur @ Ur.transpose(1, 2)) / (e[:, r:r + 1, None] + lam)
    P = boehning_lowrank(Xc, sd, lam, rank=rank)(torch.eye(d).expand(2, d, d).contiguous()).double()
    assert torch.allclose(P, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max()))
    if r == d - 1:
        assert torch.allclose(P, boehning_dense(Xc, sd, lam).state["Binv"].double(), rtol=1e-3,
                              atol=1e-3 * float(ref.abs().max()))


def test_auto_races_the_identity_against_the_bounds_twin_held_to_a_tighter_test(monkeypatch):
    """bound="auto": every problem as scikit-learn runs it (identity) and as a twin with the low-rank bound,
    which must reach TWIN_TOL x tol; the first to converge wins."""
    from probes import solvers

    X, y = residual_like(L=4, n=80, d=120, seed=5)
    folds, masks = fold_masks(y, 4)
    alone = fit_logistic_folds(X, y[None], masks, bound="none", workers=1)
    tight = fit_logistic_folds(X, y[None], masks, bound="lowrank", tol=1e-4 * solvers.TWIN_TOL, workers=1)
    assert int(tight[2].max()) < int(alone[2].min())            # the bound's twin is faster here, even held tighter
    auto = fit_logistic_folds(X, y[None], masks, workers=1)
    assert bool(auto[3].all()) and torch.equal(auto[2], tight[2])
    np.testing.assert_allclose(auto[0], tight[0], rtol=1e-4, atol=1e-6)
    monkeypatch.setattr(solvers, "TWIN_TOL", 1e-12)              # a twin that can never win: the identity alone
    never = fit_logistic_folds(X, y[None], masks, workers=1)
    assert torch.equal(never[2], alone[2])
    np.testing.assert_allclose(never[0], alone[0], rtol=1e-5, atol=1e-6)


def test_unknown_bound_is_an_error():
    X, y = residual_like(L=1)
    with pytest.raises(ValueError, match="woodbury"):
        fit_logistic_folds(X, y[None], np.ones((1, len(y)), bool), bound="exact")


def test_control_labels_are_fitted_alongside_the_task():
    X, y = residual_like(L=3, seed=4)
    folds, masks = fold_masks(y, 5)
    ctrl = np.random.default_rng(0).permutation(y)
    both = fit_logistic_folds(X, np.stack([y, ctrl]), masks)[0]
    alone = fit_logistic_folds(X, ctrl[None], masks)[0]
    np.testing.assert_allclose(both[:, :, 1], alone[:, :, 0], atol=1e-3)


def test_layers_split_over_worker_threads_give_the_same_fits():
    """``workers``: layers interleaved over Python threads, each layer fitted as in one stream."""
    X, y = residual_like(L=5, seed=2)
    folds, masks = fold_masks(y, 5)
    one = fit_logistic_folds(X, y[None], masks, workers=1)
    for workers in (2, 3):
        split = fit_logistic_folds(X, y[None], masks, workers=workers)
        np.testing.assert_allclose(split[0], one[0], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(split[1], one[1], rtol=1e-3, atol=1e-4)
        assert bool(split[3].all()) and split[2].shape == one[2].shape == (5, 5, 1)
        assert torch.equal(split[2], one[2]) or (split[2] - one[2]).abs().max() <= 1


def test_closed_form_batched_equals_one_at_a_time():
    X, y = residual_like(L=3, n=60, d=8)
    for method in ("mass_mean", "lda"):
        w, b = closed_form(X.double(), y, method, 0.1)
        for layer in range(3):
            w1, b1 = closed_form(X[layer:layer + 1].double(), y, method, 0.1)
            np.testing.assert_allclose(w[layer].numpy(), w1[0].numpy(), rtol=1e-10)
            assert abs(float(b[layer] - b1[0])) < 1e-9



def test_accuracy_equals_sklearn_when_n_below_d():
    """n < d (the real-activation regime: a few hundred prompts, d_model dimensions)."""
    X, y = residual_like(L=3, n=60, d=90, seed=7)
    res = sweep_activations(X, y, cv=4, method="logistic", control=False, seed=0)
    ref = sklearn_loop(X, y, make_folds(y, None, 4, seed=0))
    assert np.abs(res.acc_mean - ref.mean(1)).max() <= 0.005, (res.acc_mean, ref.mean(1))


@pytest.mark.parametrize("n,d", [(30, 50), (60, 20)])  # fewer rows than features: by Woodbury; more: directly
def test_dense_bound_is_the_inverse_of_boehnings_bound(n, d):
    """The dense preconditioner is ``B^-1``, ``B = Xs^T Xs / (4N) + lam I`` (Xs: the layer standardised), however built."""
    from probes.preconditioners import boehning_dense

    g = torch.Generator().manual_seed(0)
    X = torch.randn(2, n, d, generator=g) * torch.linspace(0.5, 3.0, d) + 1.0
    Xc = X - X.mean(1, keepdim=True)
    sd = Xc.pow(2).mean(1, keepdim=True).sqrt()
    lam = 1.0 / (0.8 * n)
    Xs = (Xc / sd).double()
    B = Xs.transpose(1, 2) @ Xs / (4 * n) + lam * torch.eye(d, dtype=torch.float64)
    Binv = boehning_dense(Xc, sd, lam).state["Binv"].double()
    assert torch.allclose(Binv @ B, torch.eye(d, dtype=torch.float64).expand(2, d, d), atol=2e-4)
