"""Layer sweep over precomputed activations: folds, control task, markers, parity, bad input."""
import warnings

import numpy as np
import pytest
import torch

import probes
from probes import (LinearProbe, control_task, converging_layer, depth_markers, first_above_chance,
                    jump_layer, make_folds, sweep_activations)
from probes.cv import closed_form_scores, cross_validate, logistic_scores


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
    types = (np.arange(len(y)) // 2) % 12    # word types the activations do not encode, both labels each
    res = sweep_activations(X, y, types=types, cv=5, method="logistic")
    assert res.acc_mean.shape == (6,) and res.fold_acc.shape == (6, 5)
    assert res.acc_mean[0] < 0.62
    assert res.acc_mean[-1] > 0.95 and res.auroc_mean[-1] > 0.98
    assert np.all(res.control_acc_mean < max(0.62, res.control_chance + 0.07)) and res.params["control"] and res.params["n_types"] == 12
    assert res.selectivity[-1] > 0.3
    np.testing.assert_allclose(res.selectivity, res.acc_mean - res.control_acc_mean)
    assert res.acc_ci[-1, 0] <= res.acc_mean[-1] <= res.acc_ci[-1, 1]
    np.testing.assert_allclose(res.acc_mean, res.fold_acc.mean(1))
    # signal strength 1.5 * layer: the steepest rise is from layer 0 to layer 1
    assert res.jump_layer == 1 and res.first_above_chance == 1 and res.peak_acc == res.acc_mean.max()
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
    jump, conv = depth_markers(acc, jump_min_rise=0.05, converge_eps=0.02)
    assert jump == 3          # rises 0.02, 0.18, 0.20, 0.05, ...: the steepest is into layer 3
    assert conv == 5          # after it: 0.05 (still moving), then -0.01 at layer 5 (< 0.02)
    assert depth_markers(acc, jump_min_rise=0.25)[0] is None       # no single rise of 0.25
    assert converging_layer(acc, converge_eps=0.005) == 7          # never steady: the last layer
    assert first_above_chance(acc, acc - 0.02, chance=0.5, margin=0.1) == 2
    assert depth_markers(np.full(4, 0.5)) == (None, 0)
    with pytest.raises(ValueError, match="finite"):
        jump_layer([0.5, np.nan])


# Converging points published by the reference (github.com/Luckfort/explore_CD,
# static/images/P2-0414-GLQ.pdf, as depth (C + 1) / n_layers) for curves read from the vector
# paths of its accuracy figure (static/images/P22-0405-7B-all.pdf), to 3 decimals.
REFERENCE_CURVES = {
    ("Gemma-7B", "HateEval", 3): [
        .737, .784, .793, .803, .790, .787, .795, .794, .785, .790, .781, .785, .793, .784, .783, .789,
        .793, .776, .784, .798, .796, .804, .813, .804, .825, .806, .813, .820],
    ("LLaMA-7B", "IMDb", 6): [
        .730, .748, .810, .834, .871, .888, .903, .914, .919, .933, .939, .938, .940, .944, .943, .941,
        .938, .936, .941, .935, .939, .939, .938, .940, .941, .939, .944, .943, .941, .945, .948, .944],
    ("Qwen-7B", "IMDb", 4): [
        .768, .780, .809, .824, .826, .845, .848, .861, .876, .901, .900, .921, .923, .918, .929, .946,
        .945, .939, .938, .928, .930, .931, .933, .923, .920, .925, .925, .930, .929, .929, .936, .933],
    ("Qwen-7B", "Cities", 11): [
        .436, .444, .387, .402, .431, .548, .694, .858, .925, .968, .983, .985, .988, .988, .990, .990,
        .990, .990, .990, .990, .992, .992, .992, .992, .992, .992, .988, .988, .988, .985, .982, .982],
}


def test_converging_layer_reproduces_the_reference_figures():
    for (model, name, published), curve in REFERENCE_CURVES.items():
        acc = np.asarray(curve)
        assert converging_layer(acc) + 1 == published, (model, name)
        # the previous rule (start of the plateau within 0.02 of the peak) misses all but Cities
        peak = int(np.argmax(acc))
        outside = np.flatnonzero(acc[: peak + 1] < acc[peak] - 0.02)
        plateau = int(outside[-1] + 1) if len(outside) else 0
        assert (plateau + 1 == published) == (name == "Cities"), (model, name)


def test_jump_of_a_lexically_cued_concept_is_where_the_curve_jumps_not_layer_0():
    """Known answer (Jin et al., arXiv 2404.07066): a concept cued by a word of the prompt is
    decodable from layer 0 (0.75), then the network makes it linear at layer 4. The jump is
    layer 4 and the curve is steady from layer 6; the old jump ("first layer clearly above
    chance", kept as first_above_chance) said 0."""
    acc = np.array([0.75, 0.76, 0.75, 0.77, 0.93, 0.97, 0.98, 0.98, 0.97])
    low = acc - 0.03
    assert jump_layer(acc) == 4
    assert converging_layer(acc) == 6
    assert first_above_chance(acc, low, chance=0.5) == 0   # the old "jump": wrong here
    # end to end: half the examples carry a lexical cue from layer 0 (accuracy ~0.75), all of
    # them carry the concept from layer 4 on
    rng = np.random.default_rng(1)
    n, d = 400, 16
    y = np.arange(n) % 2
    cued = rng.random(n) < 0.5
    X = torch.as_tensor(rng.normal(size=(7, n, d)), dtype=torch.float32)
    sign = torch.as_tensor(2.0 * y - 1)
    X[:4, torch.as_tensor(cued), 0] += 4 * sign[torch.as_tensor(cued)]
    X[4:, :, 1] += 4 * sign
    res = sweep_activations(X, y, cv=5)
    assert 0.65 < res.acc_mean[:4].mean() < 0.85 and res.acc_mean[4:].min() > 0.95
    assert res.jump_layer == 4 and res.converging_layer == 5 and res.first_above_chance == 0


def test_control_task_is_a_fixed_random_label_per_word_type():
    y = np.array([0, 1] * 50)
    types = np.array(list("abcdefghij") * 10)
    c = control_task(types, y, seed=3)
    for t in np.unique(types):
        assert len(set(c[types == t])) == 1                  # one label per type
    assert set(c) == {0, 1} and not np.array_equal(c, control_task(types, y, seed=4))
    np.testing.assert_array_equal(c, control_task(types, y, seed=3))
    with pytest.raises(ValueError, match="one word type"):
        control_task(np.array(["a"] * 100), y)
    with pytest.raises(ValueError, match="word type per example"):
        control_task(types[:10], y)


def test_control_task_is_memorisable_where_a_label_shuffle_is_at_chance():
    """Hewitt & Liang (arXiv 1909.03368): activations that encode the word type let a probe
    memorise the control task (high control accuracy, so low selectivity), while a global shuffle
    of the task labels is at chance by construction."""
    rng = np.random.default_rng(0)
    n_types, per, d = 20, 12, 64
    types = np.repeat(np.arange(n_types), per)
    y = rng.permutation(np.arange(len(types)) % 2)
    emb = rng.normal(size=(n_types, d)) * 3
    concept = rng.normal(size=d)
    X = emb[types] + np.outer(2 * y - 1, concept) * 0.3 + rng.normal(size=(len(y), d)) * 0.5
    X = torch.as_tensor(X, dtype=torch.float32)
    res = sweep_activations(X, y, types=types, cv=5)
    assert res.control_acc_mean[0] > 0.9                      # the probe memorises the types
    assert res.selectivity[0] < res.acc_mean[0] - 0.35
    shuffled = rng.permutation(y)
    runs, _, _ = cross_validate(X, y, None, 5, "logistic", True, 0, 1.0, 0.1, None, 500, 1e-4,
                                1, control_labels=shuffled)
    assert abs(runs["control"][0].mean() - 0.5) < 0.12        # a shuffle is chance by construction
    with pytest.raises(ValueError, match="types="):
        sweep_activations(X, y, control=True)


def test_position_sweep_core():
    X, y = layered(L=3, n=80)
    res = probes.position_sweep_from_stacks([X, X[:, torch.randperm(80)]], y, positions=[-2, -1],
                                            cv=4, method="mass_mean")
    assert res.acc_mean.shape == (3, 2)
    assert res.acc_mean[-1, 0] > 0.95 and res.acc_mean[-1, 1] < 0.7
    assert res.best()[1] == -2


def test_position_sweep_in_one_run_equals_one_sweep_per_position():
    X, y = layered(L=3, n=80)
    stacks = [X, X[:, torch.randperm(80, generator=torch.Generator().manual_seed(0))]]
    res = probes.position_sweep_from_stacks(stacks, y, positions=[-2, -1], cv=4, method="logistic")
    for p, S in enumerate(stacks):
        one = sweep_activations(S, y, cv=4, method="logistic", control=False)
        np.testing.assert_allclose(res.acc_mean[:, p], one.acc_mean, atol=1e-12)
        np.testing.assert_allclose(res.auroc_mean[:, p], one.auroc_mean, atol=1e-6)


def test_renamed_names_still_resolve_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="LayerSweep"):
        assert probes.SweepResult is probes.LayerSweep
    with pytest.warns(DeprecationWarning, match="position_sweep_from_stacks"):
        assert probes.sweep_positions is probes.position_sweep_from_stacks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from probes import LayerSweep  # noqa: F401  (the new name does not warn)
    with pytest.raises(AttributeError):
        probes.no_such_name


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
