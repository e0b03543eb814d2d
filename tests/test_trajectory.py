"""Latent-trajectory signals (analyses.trajectory): known answers on synthetic trajectories, the
correctness/selection evaluation on constructed traces, and the collection loop on a tiny model."""

import math

import numpy as np
import pytest
import torch

import hooked
from analyses import trajectory as T
from analyses import trajectory_report as R


def test_straight_line_net_equals_cumulative_and_fully_aligned():
    t = torch.arange(12, dtype=torch.float32)[:, None]
    states = torch.tensor([1.0, -2.0, 0.5, 3.0]) + t * torch.tensor([0.3, 0.1, -0.2, 0.05])
    for blocks in (None, 4):
        s = T.trajectory_signals(states, n_blocks=blocks)
        assert s["net_change"] == pytest.approx(s["cumulative_change"], rel=1e-5)
        assert s["aligned_change"] == pytest.approx(1.0, abs=1e-5)
    step = float(torch.tensor([0.3, 0.1, -0.2, 0.05]).norm())
    assert T.trajectory_signals(states)["net_change"] == pytest.approx(11 * step, rel=1e-5)


def test_zigzag_and_loop_known_values():
    zig = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    s = T.trajectory_signals(zig)
    assert s["net_change"] == pytest.approx(2.0)
    assert s["cumulative_change"] == pytest.approx(2 * math.sqrt(2))
    # step 1 (1,1) vs to-end (2,0): cos = 1/sqrt2; step 2 (1,-1) vs to-end (1,-1): cos = 1
    assert s["aligned_change"] == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    loop = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    s = T.trajectory_signals(loop)
    assert s["net_change"] == 0.0 and s["cumulative_change"] == pytest.approx(2 + math.sqrt(2))
    back = torch.tensor([[0.0], [2.0], [1.0]])  # overshoot: step1 +2 vs to-end +1 (cos 1); step2 -1 vs -1 (cos 1)
    s = T.trajectory_signals(back)
    assert s["aligned_change"] == pytest.approx(1.0) and s["cumulative_change"] == pytest.approx(3.0)
    away = torch.tensor([[0.0], [-1.0], [1.0]])  # step1 -1 vs to-end +1: cos -1; step2 +2 vs +2: cos 1
    assert T.trajectory_signals(away)["aligned_change"] == pytest.approx(0.0)


def test_normalisation_is_scale_free_and_blocks_are_contiguous_means():
    torch.manual_seed(0)
    x = torch.randn(10, 5)
    a, b = T.trajectory_signals(x, 3, normalize=True), T.trajectory_signals(10 * x, 3, normalize=True)
    for k in T.SIGNALS:
        assert a[k] == pytest.approx(b[k], rel=1e-5)
    raw, raw10 = T.trajectory_signals(x, 3), T.trajectory_signals(10 * x, 3)
    assert raw10["cumulative_change"] == pytest.approx(10 * raw["cumulative_change"], rel=1e-5)
    m = T.block_means(x, 3)
    torch.testing.assert_close(m, torch.stack([x[:4].mean(0), x[4:7].mean(0), x[7:].mean(0)]))
    stack = torch.stack([x, 2 * x])
    ls = T.layer_signals(stack, n_blocks=3, normalize=False)
    assert ls["net_change"] == pytest.approx(1.5 * raw["net_change"], rel=1e-5)
    with pytest.raises(ValueError, match="at least two states"):
        T.trajectory_signals(x[:1])
    with pytest.raises(ValueError, match=r"\[tokens, d\]"):
        T.trajectory_signals(x[None])
    with pytest.raises(ValueError, match="n_blocks must be >= 2"):
        T.block_means(x, 1)


def test_problems_answers_and_parsing():
    probs = T.arithmetic_problems(20, n_ops=3, seed=1)
    for p in probs:
        assert eval(p["expr"]) == p["answer"]  # noqa: S307  (left-to-right +/- equals Python's)
    assert T.arithmetic_problems(5, seed=2) == T.arithmetic_problems(5, seed=2)
    assert all("-" not in p["expr"] and p["answer"] > 0 for p in T.arithmetic_problems(10, ops="+"))
    with pytest.raises(ValueError, match="ops must be"):
        T.arithmetic_problems(3, ops="*")
    assert T.parse_answer("3 + 4 = 7, 7 - 2 = 5\nAnswer: 5") == 5
    assert T.parse_answer("First 12, then Answer: -3 and 9") == -3
    assert T.parse_answer("it is 4 then 8") == 8
    assert T.parse_answer("no idea") is None
    assert R.majority([3, None, 4, 4, 3]) == 3 and R.majority([None, 5]) == 5 and R.majority([None]) is None
    with pytest.raises(ValueError, match=">= 1"):
        T.arithmetic_problems(0)


def _fake_traces(signal_of_correct):
    """6 problems x 3 samples; problem p's sample j is correct iff j == p % 3 (problem 5: none correct)."""
    idx, ok, answers = [], [], []
    for p in range(6):
        for j in range(3):
            c = (j == p % 3) and p != 5
            idx.append(p)
            ok.append(c)
            answers.append(p if c else 100 + j)
    ok = np.array(ok)
    sig = {name: signal_of_correct(ok) for name in T.SIGNALS + T.BASELINES}
    probs = [{"expr": str(p), "answer": p} for p in range(6)]
    return T.Traces("fake", probs, 3, idx, ["t"] * len(idx), answers, ok, sig, [5] * len(idx),
                    {s: np.zeros((len(idx), 1)) for s in T.SIGNALS}, [0])


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_auroc_and_cross_fitted_selection_known_answers(direction):
    tr = _fake_traces(lambda ok: direction * ok.astype(float))
    st = R.evaluate(tr, n_boot=50)
    want = 1.0 if direction > 0 else 0.0
    assert st.aurocs["net_change"]["auroc"] == pytest.approx(want)
    # the direction learned on the other fold picks the correct sample wherever one exists: 5 of 6
    assert st.selection["best by aligned_change"]["k"] == 5
    assert st.selection["oracle (any correct)"]["k"] == 5
    assert st.selection["majority vote"]["k"] == 2  # every answer appears once: ties go to sample 0
    assert st.selection["first sample"]["k"] == 2  # problems 0 and 3
    lo, hi = st.selection["best by net_change"]["ci95"]
    assert lo < 5 / 6 < hi


def test_auroc_one_class_is_nan_and_ci_groups():
    assert math.isnan(R.auroc(np.array([1.0, 2.0]), np.array([True, True])))
    s = np.array([0.1, 0.9, 0.2, 0.8])
    y = np.array([False, True, False, True])
    assert R.auroc(s, y) == 1.0
    assert R.auroc_ci(s, y, np.array([0, 0, 1, 1]), n_boot=200) == (1.0, 1.0)


def test_auroc_matches_sklearn_with_ties_and_nan():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.random(60) < 0.4
    assert R.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    s[[3, 7]] = np.nan  # non-finite scores are left out
    ok = np.isfinite(s)
    assert R.auroc(s, y) == pytest.approx(roc_auc_score(y[ok], s[ok]), abs=1e-12)
    assert R.auroc(np.array([1.0, 1.0, 2.0]), np.array([True, False, True])) == pytest.approx(0.75)


def test_collect_on_tiny_model(tmp_path):
    m = hooked.tiny_model("llama", seed=0)
    probs = T.arithmetic_problems(3)
    tr = T.collect(m, probs, k=2, max_new_tokens=8, layers=[0, 2], n_blocks=4)
    assert len(tr.texts) == 6 and tr.problem_index == [0, 0, 1, 1, 2, 2]
    assert tr.per_layer["net_change"].shape == (6, 2)
    for s in T.SIGNALS:
        assert np.isfinite(tr.signals[s]).all()
    assert (tr.signals["cumulative_change"] >= tr.signals["net_change"] - 1e-6).all()
    assert (tr.signals["neg_length"] <= -1).all() and (tr.signals["mean_logprob"] < 0).all()
    assert m.active_hooks == {}
    st = R.evaluate(tr, n_boot=20)
    text = R.write_report({"base": st}, tmp_path)
    assert (tmp_path / "trajectory.json").exists() and (tmp_path / "trajectory_auroc.png").exists()
    assert "majority vote" in text
    with pytest.raises(ValueError, match="not valid"):
        T.collect(m, probs, layers=[m.n_layers])
    with pytest.raises(ValueError, match="k must be"):
        T.collect(m, probs, k=0)
    with pytest.raises(ValueError, match="No problems"):
        T.collect(m, [])


def test_demo_section_with_given_policy(tmp_path):
    m = hooked.tiny_model("llama", seed=0)
    numbers, text = R.demo_section(m, tmp_path, quick=True, policy=hooked.tiny_model("llama", seed=1), progress=False,
                                   n_problems=2, k=2, max_new_tokens=6)
    assert set(numbers) == {"base", "DPO policy"} and numbers["base"]["n_traces"] == 4
    assert (tmp_path / "trajectory" / "trajectory_selection.png").exists() and "trajectory/" in text
