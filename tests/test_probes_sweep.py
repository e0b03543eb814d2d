"""Layer sweep over precomputed activations: folds, control, markers, parity, bad input."""
import numpy as np
import pytest
import torch

import probes
from probes import LinearProbe, depth_markers, make_folds, sweep_activations
from probes.cv import closed_form_scores, logistic_scores


def layered(L=6, n=240, d=16, seed=0):
    """Layer l carries signal of strength l (layer 0: none)."""
    g = torch.Generator().manual_seed(seed)
    y = np.arange(n) % 2
    v = torch.randn(d, generator=g)
    v = v / v.norm()
    X = torch.randn(L, n, d, generator=g)
    sign = torch.as_tensor(y * 2.0 - 1.0)[:, None]
    for layer in range(L):
        X[layer] += 1.5 * layer * sign * v
    return X, y


def test_sweep_rises_with_signal_and_control_is_at_chance():
    X, y = layered()
    res = sweep_activations(X, y, cv=5, method="logistic")
    assert res.acc_mean.shape == (6,) and res.fold_acc.shape == (6, 5)
    assert res.acc_mean[0] < 0.62
    assert res.acc_mean[-1] > 0.95 and res.auroc_mean[-1] > 0.98
    assert np.all(res.control_acc_mean < 0.65)
    assert res.selectivity[-1] > 0.3
    assert res.acc_ci[-1, 0] <= res.acc_mean[-1] <= res.acc_ci[-1, 1]
    np.testing.assert_allclose(res.acc_mean, res.fold_acc.mean(1))
    assert res.jump_layer in (1, 2) and res.peak_acc == res.acc_mean.max()
    np.testing.assert_allclose(res.relative_depth, (np.arange(6) + 1) / 6)
    for method in ("mass_mean", "lda"):
        r = sweep_activations(X, y, cv=5, method=method, control=False)
        assert r.acc_mean[-1] > 0.95 and r.acc_mean[0] < 0.62 and r.selectivity is None


def test_sweep_equals_linear_probe_on_each_fold():
    X, y = layered(L=3, n=120)
    folds = make_folds(y, None, 4, seed=0)
    tr, te = folds[1]
    for method in ("mass_mean", "lda"):
        scores = closed_form_scores(X[:, tr], y[tr], X[:, te], method=method)
        for layer in range(3):
            p = LinearProbe(method).fit(X[layer, tr], y[tr])
            np.testing.assert_allclose(scores[layer], p.decision_function(X[layer, te]),
                                       rtol=1e-4, atol=1e-4)
    # logistic: the batched solver reaches the same optimum as scikit-learn (both converged
    # tightly here, so the scores agree closely, not just the predictions)
    scores = logistic_scores(X, y[None], folds, tol=1e-5)[1][:, 0]
    for layer in range(3):
        p = LinearProbe("logistic", tol=1e-10).fit(X[layer, tr], y[tr])
        np.testing.assert_allclose(scores[layer], p.decision_function(X[layer, te]), rtol=2e-2,
                                   atol=2e-2)


def test_groups_stop_memorisation():
    # Each group has its own random offset and one label: without groups the probe can memorise
    # the offsets; group-aware folds show there is no generalising concept.
    rng = np.random.default_rng(0)
    n_groups, per, d = 60, 4, 128
    groups = np.repeat(np.arange(n_groups), per)
    glabel = rng.permutation(np.arange(n_groups) % 2)
    y = glabel[groups]
    X = torch.as_tensor(rng.normal(size=(n_groups, d))[groups] * 3 + rng.normal(size=(len(y), d)) * 0.3,
                        dtype=torch.float32)
    free = sweep_activations(X, y, None, cv=5, control=False)
    grouped = sweep_activations(X, y, groups, cv=5, control=False)
    assert free.acc_mean[0] > 0.9
    assert grouped.acc_mean[0] < 0.7
    for tr, te in make_folds(y, groups, 5):
        assert not set(groups[tr]) & set(groups[te])


def test_depth_markers_hand_example():
    acc = np.array([0.5, 0.52, 0.7, 0.9, 0.95, 0.94, 0.96, 0.90])
    jump, conv = depth_markers(acc, acc - 0.02, chance=0.5, jump_margin=0.1, converge_eps=0.02)
    assert jump == 2          # 0.70 >= 0.60 and its lower bound 0.68 > 0.5
    assert conv == 4          # layers 4..6 are within 0.02 of the peak 0.96 at layer 6
    jump, conv = depth_markers(acc, acc - 0.02, chance=0.5, jump_margin=0.3)
    assert jump == 3
    assert depth_markers(np.full(4, 0.5), np.full(4, 0.45), 0.5)[0] is None


def test_position_sweep_core():
    X, y = layered(L=3, n=80)
    res = probes.sweep_positions([X, X[:, torch.randperm(80)]], y, positions=[-2, -1], cv=4,
                                 method="mass_mean")
    assert res.acc_mean.shape == (3, 2)
    assert res.acc_mean[-1, 0] > 0.95 and res.acc_mean[-1, 1] < 0.7
    assert res.best()[1] == -2


def test_bad_input_errors():
    X, y = layered(L=2, n=20)
    with pytest.raises(ValueError, match="class"):
        sweep_activations(X, np.zeros(20, dtype=int))
    with pytest.raises(ValueError, match="folds"):
        sweep_activations(X[:, :4], y[:4], cv=5)
    with pytest.raises(ValueError, match="labels"):
        sweep_activations(X, y[:15])
    bad = X.clone()
    bad[1, 3, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        sweep_activations(bad, y)
    with pytest.raises(ValueError, match="empty"):
        sweep_activations(torch.zeros(2, 0, 4), np.zeros(0))
    with pytest.raises(ValueError, match="groups"):
        sweep_activations(X, y, groups=np.repeat([0, 1, 2], [7, 7, 6]), cv=5)
    with pytest.raises(ValueError, match="texts"):
        probes.datasets.ConceptDataset("x", ["a", "b"], [0])
    with pytest.raises(ValueError, match="empty"):
        probes.datasets.ConceptDataset("x", [], [])


def test_sweep_result_to_dict_is_plain_json():
    import json

    g = np.random.default_rng(0)
    X = torch.from_numpy(g.normal(size=(2, 40, 6))).float()
    y = np.arange(40) % 2
    d = probes.sweep_activations(X, y, cv=2).to_dict()
    again = json.loads(json.dumps(d, allow_nan=False))        # no numpy, tensors or NaN left
    assert again["acc_mean"] == d["acc_mean"] and len(d["acc_mean"]) == 2 and "activations" not in d
