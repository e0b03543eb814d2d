"""Pure-tensor tests of the steering operators, position masks, extraction maths,
steerability statistics, the sentiment lexicon and SteeringVector I/O (no model)."""

import json

import pytest
import torch

from interventions import data, operators as ops
from interventions.evaluate import anti_steerable_fraction, steerability_slopes
from interventions.extraction import majority_sign, mean_difference, pca_direction
from interventions.steering import SteeringVector


def _act(seed=0, shape=(2, 5, 8)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_add_only_touches_masked_positions():
    x, v = _act(), torch.arange(8.0)
    mask = torch.tensor([[False, True, True, False, False], [True, False, False, False, True]])
    y = ops.add(x, v, 2.0, mask)
    assert torch.equal(y[~mask], x[~mask])
    assert torch.allclose(y[mask], x[mask] + 2.0 * v)


def test_add_multiplier_zero_is_bit_identical():
    x = _act()
    assert torch.equal(ops.add(x, torch.randn(8), 0.0), x)
    assert torch.equal(ops.ablate(x, torch.randn(8), 0.0), x)


def test_ablate_removes_component():
    x, v = _act(1), torch.randn(8)
    y = ops.ablate(x, v)
    u = v / v.norm()
    assert (y @ u).abs().max() < 1e-5
    # the orthogonal part is untouched
    assert torch.allclose(y, x - (x @ u)[..., None] * u, atol=1e-6)
    # half ablation halves the component
    assert torch.allclose(ops.ablate(x, v, 0.5) @ u, 0.5 * (x @ u), atol=1e-5)


def test_clamp_sets_coordinate():
    x, v = _act(2), torch.randn(8) * 3
    u = v / v.norm()
    y = ops.clamp(x, v, 1.5)
    assert torch.allclose(y @ u, torch.full((2, 5), 1.5 * float(v.norm())), atol=1e-5)
    assert torch.allclose(ops.clamp(x, v, 0.0), ops.ablate(x, v), atol=1e-6)


def test_head_shaped_vector():
    x, v = _act(3, (2, 4, 3, 5)), torch.randn(3, 5)
    y = ops.ablate(x, v)
    assert (y.flatten(2) @ (v.flatten() / v.norm())).abs().max() < 1e-5


def test_shape_and_value_errors():
    with pytest.raises(ValueError, match="trailing dimensions"):
        ops.add(_act(), torch.randn(7), 1.0)
    with pytest.raises(ValueError, match="non-zero"):
        ops.ablate(_act(), torch.zeros(8))
    with pytest.raises(ValueError, match="finite"):
        ops.check_finite("multiplier", float("nan"))
    with pytest.raises(ValueError, match="NaN/inf"):
        ops.check_finite("vector", torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="Unknown operator"):
        ops.get_operator("scale")
    with pytest.raises(ValueError, match="Unknown positions"):
        ops.check_positions("last")


def test_position_mask_semantics():
    # row 0: 2 pads then 3 prompt tokens then 1 generated; row 1: 4 prompt tokens + 1 generated, no pad... (T=6)
    tok_pos = torch.tensor([[-1, -1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])
    plen = torch.tensor([3, 5])
    gen = tok_pos >= plen[:, None]
    all_ = ops.position_mask("all", tok_pos, gen, plen)
    assert all_.tolist() == [[False, False, True, True, True, True], [True] * 6]
    assert ops.position_mask("prompt", tok_pos, gen, plen).tolist() == [
        [False, False, True, True, True, False],
        [True, True, True, True, True, False],
    ]
    assert ops.position_mask("generated", tok_pos, gen, plen).tolist() == [[False] * 5 + [True], [False] * 5 + [True]]
    # -1 = each row's last prompt token; 0 = first real token
    assert ops.position_mask([0, -1], tok_pos, gen, plen).tolist() == [
        [False, False, True, False, True, False],
        [True, False, False, False, True, False],
    ]
    # decode step (T=1): only 'all'/'generated' select it
    step_pos, step_gen = torch.tensor([[3], [5]]), torch.tensor([[True], [True]])
    assert ops.position_mask("generated", step_pos, step_gen, plen).all()
    assert not ops.position_mask("prompt", step_pos, step_gen, plen).any()


def test_mean_difference_and_pca_sign():
    g = torch.Generator().manual_seed(0)
    d = torch.zeros(16)
    d[3] = 2.0
    neg = torch.randn(40, 16, generator=g)
    pos = neg + d + 0.1 * torch.randn(40, 16, generator=g)
    md = mean_difference(pos, neg)
    assert torch.allclose(md, d, atol=0.05)
    v = pca_direction(pos, neg)
    assert 1.9 < float(v[3]) < 2.1  # sign points from negatives to positives, length = mean projection
    assert float(v.norm()) == pytest.approx(float(v[3]), rel=0.02)
    # majority rule flips a direction pointing the wrong way
    assert torch.equal(majority_sign(-d, pos, neg), d)
    with pytest.raises(ValueError, match="same shape"):
        mean_difference(pos, neg[:3])


def test_pca_centered_majority_sign():
    g = torch.Generator().manual_seed(1)
    neg = torch.randn(30, 8, generator=g)
    coef = 1.0 + torch.rand(30, generator=g) * 3  # varying strength along e0 -> variance along e0
    pos = neg.clone()
    pos[:, 0] += coef
    v = pca_direction(pos, neg, center=True)
    assert v[0] > 0 and abs(float(v[0])) / float(v.norm()) > 0.99


def test_steerability_slopes_and_anti_fraction():
    m = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    metric = torch.stack([3 * m + 1, -0.5 * m, 0 * m + 4, 2 * m], 1)  # [M, N]
    s = steerability_slopes(m, metric)
    assert torch.allclose(s, torch.tensor([3.0, -0.5, 0.0, 2.0]), atol=1e-6)
    assert anti_steerable_fraction(s) == 0.25
    with pytest.raises(ValueError, match="two distinct"):
        steerability_slopes(torch.tensor([1.0, 1.0]), torch.zeros(2, 3))


def test_sentiment_lexicon():
    assert data.sentiment_score("What a wonderful, happy day!") == pytest.approx(2 / 5)
    assert data.sentiment_score("This was terrible and I hated it.") == pytest.approx(-2 / 7)
    assert data.sentiment_score("It was not good.") < 0  # negation flips
    assert data.sentiment_score("The table is brown.") == 0.0
    assert data.sentiment_counts("I'm looking forward to it, can't wait!") == (2, 0, 7)  # phrases, not negation
    assert data.sentiment_counts("a far cry from home") == (0, 1, 5)
    pairs = data.sentiment_pairs()
    assert len(pairs) == 32 and all(p != n for p, n in pairs)
    assert sum(data.sentiment_score(p) > data.sentiment_score(n) for p, n in pairs) >= 28


def test_save_load_roundtrip(tmp_path):
    vec = SteeringVector(
        {"resid_post.3": torch.randn(8), "mlp.hidden.2": torch.randn(16)},
        model_name="tiny",
        method="mean_diff",
        read_position=-1,
        n_pairs=5,
        metadata={"note": "x"},
    )
    vec.save(tmp_path / "v")
    meta = json.loads((tmp_path / "v" / "steering.json").read_text())
    assert meta["sites"] == ["resid_post.3", "mlp.hidden.2"] and meta["read_position"] == -1
    back = SteeringVector.load(tmp_path / "v")
    assert back.sites == vec.sites and back.model_name == "tiny" and back.n_pairs == 5
    for s in vec.sites:
        assert torch.equal(back[s], vec[s])
    assert back.version == vec.version != ""
    u = vec.normalized()
    assert all(abs(n - 1) < 1e-6 for n in u.norms().values()) and u.normalization == "unit"


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="No steering vector"):
        SteeringVector.load(tmp_path / "missing")
    vec = SteeringVector({"resid_post.0": torch.ones(4)})
    vec.save(tmp_path / "v")
    meta = json.loads((tmp_path / "v" / "steering.json").read_text())
    meta["sites"] = ["resid_post.1"]
    (tmp_path / "v" / "steering.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="inconsistent"):
        SteeringVector.load(tmp_path / "v")


def test_vector_validation():
    with pytest.raises(ValueError, match="NaN/inf"):
        SteeringVector({"resid_post.0": torch.tensor([1.0, float("nan")])})
    with pytest.raises(ValueError, match="non-empty"):
        SteeringVector({})
    with pytest.raises(ValueError, match="no site"):
        SteeringVector({"resid_post.0": torch.ones(4)}).select("resid_post.1")


def test_extract_rejects_ragged_read_positions():
    from interventions import extract

    with pytest.raises(ValueError, match="one activation per prompt"):
        extract(None, [("a", "b")], "resid_post.0", positions=[0, 1])
    with pytest.raises(ValueError, match="Unknown extraction method"):
        extract(None, [("a", "b")], "resid_post.0", method="svd")


def test_extract_old_position_keyword_is_deprecated():
    from interventions import extract

    with pytest.warns(DeprecationWarning, match="positions="):
        with pytest.raises(ValueError, match="one activation per prompt"):
            extract(None, [("a", "b")], "resid_post.0", position="all")
    with pytest.raises(TypeError, match="both"):
        extract(None, [("a", "b")], "resid_post.0", positions=-2, position=-2)


def test_one_position_parser_for_every_package():
    from hooked import positions as P

    assert P.parse("last").per_prompt and P.parse(-2).indices == (-2,)
    assert P.parse([0, -1], P.WRITE).kind == "indices"
    for spec, allowed in (("each", P.CAPTURE), ("prompt", P.CAPTURE), ("mean", P.WRITE), ("last", P.PATCH)):
        with pytest.raises(ValueError, match="Unknown positions"):
            P.parse(spec, allowed)
    with pytest.raises(ValueError, match="selects nothing"):
        P.parse([], P.WRITE)
    with pytest.raises(TypeError, match="ambiguous"):
        P.parse(True)
    with pytest.raises(ValueError, match="one activation per prompt"):
        P.parse("all", P.PER_PROMPT, reason="would not give one activation per prompt")
    assert ops.position_mask is P.token_mask
