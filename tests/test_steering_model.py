"""Steering vectors on a tiny random Llama: bit-identity at multiplier 0, a hand-written
forward-hook reference, ablation, KV cache vs no cache, padding vs one-by-one, bad input."""

import pytest
import torch

import hooked
import interventions as iv
from interventions.steering import attach

PROMPTS = ["hello there my friend", "hi", "The weather today is quite"]  # different lengths -> left padding
SCALE = 4.0  # sharpen the random model so greedy generations vary token to token


def _sharpen(hf):
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 2:
                p.mul_(SCALE)


@pytest.fixture(scope="module")
def model():
    m = hooked.tiny_model("llama", seed=0)
    _sharpen(m.hf_model)
    return m


@pytest.fixture(scope="module")
def vec():
    g = torch.Generator().manual_seed(0)
    return iv.SteeringVector({"resid_post.1": torch.randn(64, generator=g) * 3}, model_name="tiny-llama-s0")


def _logits(model, prompts=PROMPTS):
    enc = model.tokenize(prompts)
    return model.forward(enc["input_ids"], enc["attention_mask"]), enc


def test_multiplier_zero_is_bit_identical(model, vec):
    """Bit-identical on both backends: a hooked and a hook-free forward compute the same way."""
    nn = hooked.tiny_model("llama", seed=0, backend="nnsight")
    _sharpen(nn.hf_model)
    for m in (model, nn):
        base, enc = _logits(m)
        real = enc["attention_mask"].bool()
        for op in ("add", "ablate"):
            with vec.apply(m, multiplier=0.0, operator=op):
                z, _ = _logits(m)
            assert torch.equal(base[real], z[real]), (m.backend, op)
    with vec.apply(model, multiplier=1.0):
        s, _ = _logits(model)
    assert (s - base).abs().max() > 1e-2  # the vector does something


def test_add_equals_hand_written_forward_hook(model, vec):
    hf, _ = hooked.tiny_hf_model("llama", seed=0)
    _sharpen(hf)
    v, m = vec["resid_post.1"], 2.5

    def ref_hook(mod, args, out):
        if isinstance(out, tuple):
            return (out[0] + m * v,) + out[1:]
        return out + m * v

    prompts = ["hello there my friend", "The weather today is"]  # one prompt at a time: no padding in the reference
    for p in prompts:
        ids = model.tokenize([p])["input_ids"]
        h = hf.model.layers[1].register_forward_hook(ref_hook)
        try:
            with torch.no_grad():
                ref = hf(input_ids=ids, use_cache=False).logits
        finally:
            h.remove()
        with vec.apply(model, multiplier=m):
            got = model.forward(ids)
        assert torch.allclose(got, ref, atol=1e-4), float((got - ref).abs().max())


def test_ablate_removes_direction(model, vec):
    u = vec["resid_post.1"] / vec["resid_post.1"].norm()
    before = model.capture(PROMPTS, "resid_post.1", positions="all")["resid_post.1"]
    with vec.apply(model, multiplier=1.0, operator="ablate"):
        after = model.capture(PROMPTS, "resid_post.1", positions="all")["resid_post.1"]
    assert (before @ u).abs().max() > 0.1
    assert (after @ u).abs().max() < 1e-4
    # only the component along u changed
    assert torch.allclose(after, before - (before @ u)[:, None] * u, atol=1e-4)
    with vec.apply(model, multiplier=0.5, operator="clamp"):
        clamped = model.capture(PROMPTS, "resid_post.1", positions="all")["resid_post.1"]
    assert torch.allclose(clamped @ u, torch.full((clamped.shape[0],), 0.5 * float(vec["resid_post.1"].norm())), atol=1e-3)


@pytest.mark.parametrize("positions", ["all", "prompt", "generated", [0, -1]])
def test_kv_cache_equals_no_cache_and_padding_equals_one_by_one(model, vec, positions):
    plain = model.generate_ids(PROMPTS, max_new_tokens=6)
    with vec.apply(model, multiplier=1.0, positions=positions):
        cached = model.generate_ids(PROMPTS, max_new_tokens=6, use_cache=True)
        uncached = model.generate_ids(PROMPTS, max_new_tokens=6, use_cache=False)
        single = [model.generate_ids([p], max_new_tokens=6)[0] for p in PROMPTS]
    assert cached == uncached
    assert cached == single
    assert cached != plain  # steering changed the continuation
    if positions == "generated":  # the prompt pass is unsteered: first new token unchanged, later ones steered
        assert [r[0] for r in cached] == [r[0] for r in plain]


def test_padded_logits_equal_one_by_one(model, vec):
    with vec.apply(model, multiplier=1.5, positions="all"):
        batch, enc = _logits(model)
        for i, p in enumerate(PROMPTS):
            one, _ = _logits(model, [p])
            n = one.shape[1]
            assert torch.allclose(batch[i, -n:], one[0], atol=1e-4)


def test_decode_steps_see_one_generated_token(model, vec):
    seen = []

    def spy(act, ctx):
        seen.append((act.shape[1], ctx.is_generated.clone(), ctx.positions.clone()))

    with vec.apply(model, multiplier=1.0, positions="generated"), model.hooks({"resid_post.1": spy}):
        model.generate_ids(PROMPTS, max_new_tokens=3, use_cache=True)
    assert seen[0][0] > 1 and not seen[0][1].any()  # prompt pass
    lengths = model.tokenize(PROMPTS)["attention_mask"].sum(1)
    for k, (t, gen, pos) in enumerate(seen[1:], start=0):
        assert t == 1 and gen.all()
        assert torch.equal(pos[:, 0], lengths + k)  # counts from each prompt's real tokens


def test_multi_site_and_dict_multiplier(model):
    g = torch.Generator().manual_seed(1)
    two = iv.SteeringVector({"resid_post.0": torch.randn(64, generator=g), "mlp_out.2": torch.randn(64, generator=g)})
    with two.apply(model, multiplier={"resid_post.0": 2.0, "mlp_out.2": -1.0}):
        both, _ = _logits(model)
    with two.apply(model, 2.0, sites="resid_post.0"), two.apply(model, -1.0, sites=["mlp_out.2"]):
        nested, _ = _logits(model)
    assert torch.equal(both, nested)
    assert model.active_hooks == {}


def test_bad_input_is_a_clear_error_and_leaves_no_hook(model, vec):
    cases = [
        (lambda: iv.SteeringVector({"resid_post.1": torch.randn(65)}).apply(model), "shape"),
        (lambda: iv.SteeringVector({"mlp.hidden.1": torch.randn(64)}).apply(model), r"\(128,\)"),
        (lambda: vec.apply(model, multiplier=float("inf")), "finite"),
        (lambda: vec.apply(model, multiplier=float("nan")), "finite"),
        (lambda: attach(model, {"resid_post.1": torch.tensor([float("nan")] * 64)}), "NaN"),
        (lambda: iv.SteeringVector({"resid_post.9": torch.randn(64)}).apply(model), "out of range"),
        (lambda: iv.SteeringVector({"resid_side.1": torch.randn(64)}).apply(model), "Unknown site"),
        (lambda: iv.SteeringVector({"attn.pattern.1": torch.randn(64)}).apply(model), "steered"),
        (lambda: vec.apply(model, operator="multiply"), "Unknown operator"),
        (lambda: vec.apply(model, positions="last"), "Unknown positions"),
        (lambda: vec.apply(model, multiplier={"resid_post.0": 1.0}), "no entry"),
        # a good site first, then a bad one: nothing may stay registered
        (lambda: attach(model, {"resid_post.0": torch.randn(64), "resid_post.1": torch.randn(3)}), "shape"),
    ]
    for fn, msg in cases:
        with pytest.raises((ValueError, TypeError), match=msg):
            fn()
        assert model.active_hooks == {}, msg


def test_exception_inside_block_removes_hooks(model, vec):
    with pytest.raises(RuntimeError, match="boom"):
        with vec.apply(model, 1.0):
            assert model.active_hooks == {"resid_post.1": 1}
            raise RuntimeError("boom")
    assert model.active_hooks == {}
    h = vec.apply(model, 1.0)
    assert h.active
    h.remove()
    h.remove()  # idempotent
    assert model.active_hooks == {} and not h.active


def test_extract_mean_diff_is_padding_invariant(model):
    pairs = iv.data.sentiment_pairs()[:6]
    a = iv.extract(model, pairs, ["resid_post.0", "resid_post.2"], batch_size=6)
    b = iv.extract(model, pairs, ["resid_post.0", "resid_post.2"], batch_size=1)
    for s in a.sites:
        assert torch.allclose(a[s], b[s], atol=1e-5)
    pos = model.capture([p for p, _ in pairs], "resid_post.2", positions="last")["resid_post.2"]
    neg = model.capture([n for _, n in pairs], "resid_post.2", positions="last")["resid_post.2"]
    assert torch.allclose(a["resid_post.2"], (pos - neg).mean(0), atol=1e-6)
    assert a.method == "mean_diff" and a.n_pairs == 6 and a.model_name == model.name
    pca = iv.extract(model, pairs, "resid_post.2", method="pca")
    assert float(pca["resid_post.2"] @ a["resid_post.2"]) > 0  # majority sign agrees with the mean difference


def test_multiplier_sweep_on_unembedding_direction(model):
    """Steering final_norm by w = W_U[pos] - W_U[neg] moves the logit difference by exactly m * ||w||^2."""
    tok = model.tokenizer
    pos_id, neg_id = tok.encode(" good", add_special_tokens=False)[0], tok.encode(" bad", add_special_tokens=False)[0]
    W = model.hf_model.get_output_embeddings().weight.detach()
    w = W[pos_id] - W[neg_id]
    vec = iv.SteeringVector({"final_norm": w})
    res = iv.multiplier_sweep(model, vec, PROMPTS, " good", " bad", multipliers=[-1.0, 0.0, 0.5, 1.0], batch_size=2)
    assert res.metric.shape == (4, 3)
    base, _ = _logits(model)
    assert torch.allclose(res.metric[1], base[:, -1, pos_id] - base[:, -1, neg_id], atol=1e-4)
    expected = float(w @ w)
    assert torch.allclose(res.slopes, torch.full((3,), expected), rtol=1e-3)
    assert res.anti_steerable_fraction == 0.0 and res.steerability == pytest.approx(expected, rel=1e-3)
    # anti-steering with the flipped vector: every example anti-steerable
    flipped = iv.SteeringVector({"final_norm": -w})
    assert iv.multiplier_sweep(model, flipped, PROMPTS, " good", " bad", [0.0, 1.0]).anti_steerable_fraction == 1.0
    assert iv.side_effect_kl(model, vec, PROMPTS, 0.0) == 0.0
    assert iv.side_effect_kl(model, vec, PROMPTS, 0.2) > 1e-4
    with pytest.raises(ValueError, match="single tokens"):
        iv.multiplier_sweep(model, vec, PROMPTS, " goodness gracious", " bad", [0.0, 1.0])


def test_nnsight_backend_matches_tl(model, vec):
    nn = hooked.tiny_model("llama", seed=0, backend="nnsight")
    _sharpen(nn.hf_model)
    with vec.apply(model, 1.0, positions="generated"):
        tl_ids = model.generate_ids(PROMPTS, max_new_tokens=4)
    with vec.apply(nn, 1.0, positions="generated"):
        nn_ids = nn.generate_ids(PROMPTS, max_new_tokens=4)
    assert tl_ids == nn_ids
    with vec.apply(model, 1.0), vec.apply(nn, 1.0):
        a, enc = _logits(model)
        b, _ = _logits(nn)
    real = enc["attention_mask"].bool()  # padding slots hold no token: attention kernels may differ there
    assert torch.allclose(a[real], b[real], atol=1e-4)
    with pytest.raises(ValueError, match="nnsight"):
        iv.SteeringVector({"resid_mid.1": torch.randn(64)}).apply(nn)
    assert nn.active_hooks == {}


def test_probe_direction_and_scorer(model):
    probes = pytest.importorskip("probes")
    pairs = iv.data.sentiment_pairs()[:8]
    vec = iv.extract(model, pairs, "resid_post.2", method="probe")
    pos = model.capture([p for p, _ in pairs], "resid_post.2")["resid_post.2"]
    neg = model.capture([n for _, n in pairs], "resid_post.2")["resid_post.2"]
    v = vec["resid_post.2"]
    assert float(((pos - neg) @ v).mean()) == pytest.approx(float(v.norm()) ** 2, rel=1e-4)  # scaled by mean projection
    X = torch.cat([pos, neg])
    y = torch.cat([torch.ones(8), torch.zeros(8)]).long()
    probe = probes.LinearProbe(method="mass_mean").fit(X, y)
    pv = iv.from_probe(probe, "resid_post.2", scale=2.0)
    assert pv.method == "probe" and torch.allclose(pv["resid_post.2"], 2.0 * probe.direction_, atol=1e-6)
    scorer = iv.ProbeScorer(model, probe, "resid_post.2", positions="last")
    scores = scorer([p for p, _ in pairs] + [n for _, n in pairs])
    assert scores == pytest.approx(probe.decision_function(X).tolist(), abs=1e-4)
