"""Model-facing probes on tiny random models: knowledge entropy, resuscitation, sweeps, lenses."""
import math

import numpy as np
import pytest
import torch

import hooked
import probes

TEXTS = ["The city of Paris is in France.", "hi there", "A coin is heads up. Ann flips the coin.",
         "one two three four", "Numbers: 12 is larger than 7."]


@pytest.fixture(scope="module")
def llama():
    return hooked.tiny_model("llama", seed=0)


def hand_knowledge_entropy(model, texts):
    acts = model.capture(texts, sites="mlp.hidden.*", positions="all")
    prompt = acts.index[:, 0]
    coefs = []
    for layer in range(model.n_layers):
        a = acts[f"mlp.hidden.{layer}"].double().abs()
        per_seq = torch.stack([a[prompt == i].mean(0) for i in range(len(texts))])
        coefs.append(per_seq.mean(0))
    c = torch.stack(coefs)
    p = c / c.sum(-1, keepdim=True)
    return -(p * p.log()).sum(-1), c


def test_knowledge_entropy_matches_hand_computation_and_ignores_padding(llama):
    ke = probes.knowledge_entropy(llama, TEXTS, batch_size=5)    # one left-padded batch
    H, c = hand_knowledge_entropy(llama, TEXTS)
    np.testing.assert_allclose(ke.per_layer.numpy(), H.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ke.coefficients.numpy(), c.numpy(), rtol=1e-4)
    assert ke.total == pytest.approx(float(H.sum()), rel=1e-5)
    assert ke.coefficients.shape == (llama.n_layers, llama.d_mlp)
    assert ke.n_texts == 5
    # bounded by ln(d_mlp) per layer
    assert float(ke.per_layer.max()) <= math.log(llama.d_mlp) + 1e-6
    one_by_one = probes.knowledge_entropy(llama, TEXTS, batch_size=1)   # no padding at all
    np.testing.assert_allclose(ke.coefficients.numpy(), one_by_one.coefficients.numpy(), rtol=1e-4)


def test_resuscitation_moves_selected_slots_to_q_times_mean_and_undoes(llama):
    before = probes.knowledge_entropy(llama, TEXTS)
    up = llama.layer_module(0).mlp.up_proj
    w0 = [p.detach().clone() for p in up.parameters()]
    with probes.resuscitate(llama, coefficients=before, p=0.5, q=2.0, layers=[0]) as h:
        after = probes.knowledge_entropy(llama, TEXTS)
        idx = h.selected[0]
        assert len(idx) == llama.d_mlp // 2
        target = 2.0 * before.coefficients[0].mean()
        np.testing.assert_allclose(after.coefficients[0, idx].numpy(), float(target), rtol=1e-3)
        rest = torch.ones(llama.d_mlp, dtype=torch.bool)
        rest[idx] = False
        np.testing.assert_allclose(after.coefficients[0, rest].numpy(),
                                   before.coefficients[0, rest].numpy(), rtol=1e-4)
        assert after.per_layer[0] > before.per_layer[0]   # flatter distribution
    assert not h.active
    for a, b in zip(up.parameters(), w0):
        assert torch.equal(a, b)
    restored = probes.knowledge_entropy(llama, TEXTS)
    np.testing.assert_allclose(restored.coefficients.numpy(), before.coefficients.numpy(), rtol=1e-6)


def test_resuscitation_all_layers_and_gpt2():
    g = hooked.tiny_model("gpt2", seed=1)
    texts = TEXTS[:3]
    fc = g.layer_module(1).mlp.c_fc
    w = [p.detach().clone() for p in fc.parameters()]
    h = probes.resuscitate(g, texts, p=0.25, q=3.0)
    assert sorted(h.selected) == [0, 1, 2]
    weight = next(p for n, p in fc.named_parameters() if n.endswith("weight"))
    w_before = next(b for (n, _), b in zip(fc.named_parameters(), w) if n.endswith("weight"))
    cols = h.selected[1]
    # Conv1D weight is [in, out]: the selected slots are columns, scaled by their ratios
    np.testing.assert_allclose(weight[:, cols].detach().numpy(),
                               (w_before[:, cols] * h.ratios[1]).numpy(), rtol=1e-5)
    others = torch.ones(g.d_mlp, dtype=torch.bool)
    others[cols] = False
    assert torch.equal(weight[:, others], w_before[:, others])
    h.remove()
    h.remove()  # idempotent
    assert all(torch.equal(a, b) for a, b in zip(fc.parameters(), w))
    with pytest.raises(ValueError, match="texts"):
        probes.resuscitate(g)
    with pytest.raises(ValueError, match="quantile"):
        probes.resuscitate(g, texts, p=1.5)


def test_knowledge_entropy_bad_input(llama):
    with pytest.raises(ValueError, match="empty"):
        probes.knowledge_entropy(llama, [])
    with pytest.raises(TypeError, match="list of strings"):
        probes.knowledge_entropy(llama, "just one string")


def test_layer_sweep_on_tiny_model(llama):
    ds = probes.datasets.load("factual", n=40)
    res = probes.layer_sweep(llama, ds, cv=4, method="mass_mean", keep_activations=True)
    assert res.sites == [f"resid_post.{i}" for i in range(3)]
    np.testing.assert_allclose(res.relative_depth, [1 / 3, 2 / 3, 1.0])
    X = llama.capture(ds.texts, sites="resid_post.*").stack("resid_post.*")
    ref = probes.sweep_activations(X, ds.labels, ds.groups, cv=4, method="mass_mean")
    np.testing.assert_allclose(res.acc_mean, ref.acc_mean)
    probe = res.probe(2)
    assert probe.coef_.shape == (llama.d_model,)
    ps = probes.position_sweep(llama, ds, positions=[-3, -2, -1], cv=4)
    assert ps.acc_mean.shape == (3, 3)
    # the last offset is the "last" position of the layer sweep
    np.testing.assert_allclose(ps.acc_mean[:, -1], res.acc_mean)
    with pytest.raises(ValueError, match="texts"):
        probes.layer_sweep(llama, (["a", "b", "c"], [0, 1]))
    with pytest.raises(ValueError, match="negative offsets"):
        probes.position_sweep(llama, ds, positions=[-1, 0], cv=4)
    with pytest.raises(ValueError, match="shortest prompt"):
        probes.position_sweep(llama, ds, positions=[-100], cv=4)
    with pytest.raises(ValueError, match="token offsets"):
        probes.position_sweep(llama, ds, positions="last", cv=4)


def test_position_stacks_equal_one_capture_per_position(llama):
    """One capture of several positions, mapped back per prompt, equals capturing each offset alone."""
    ds = probes.datasets.load("factual", n=40)
    stacks, offsets, sites, _ = probes.sweep.position_stacks(llama, ds, "resid_post.*", [-3, -2, -1])
    assert offsets == [-3, -2, -1] and sites == [f"resid_post.{i}" for i in range(3)]
    for p, S in zip(offsets, stacks):
        alone = llama.capture(ds.texts, sites="resid_post.*", positions=p).stack("resid_post.*").float()
        assert S.shape == alone.shape and torch.equal(S, alone)


def test_layer_sweep_control_task_and_normed_mid_representation(llama):
    ds = probes.datasets.load("factual", n=40)
    res = probes.layer_sweep(llama, ds, cv=4, method="mass_mean")     # built-in types: control on
    assert res.params["control"] and res.selectivity.shape == (3,)
    np.testing.assert_allclose(res.selectivity, res.acc_mean - res.control_acc_mean)
    # the reference representation: ln2 applied to resid_mid, per token
    mid = probes.layer_sweep(llama, ds, cv=4, method="mass_mean", representation="resid_mid_normed",
                             keep_activations=True)
    assert mid.sites == [f"ln2(resid_mid.{i})" for i in range(3)]
    np.testing.assert_allclose(mid.relative_depth, [0.5 / 3, 1.5 / 3, 2.5 / 3])
    acts = llama.capture(ds.texts, sites="resid_mid.*")
    with torch.no_grad():
        ref = torch.stack([llama.module("ln2", i)(acts[f"resid_mid.{i}"]) for i in range(3)])
    torch.testing.assert_close(mid.activations, ref.float(), rtol=1e-5, atol=1e-5)
    mean = probes.layer_sweep(llama, ds, cv=4, method="mass_mean", positions="mean",
                              representation="resid_mid_normed", keep_activations=True)
    allt = llama.capture(ds.texts[:1], sites="resid_mid.1", positions="all")["resid_mid.1"]
    with torch.no_grad():
        want = llama.module("ln2", 1)(allt).mean(0)
    torch.testing.assert_close(mean.activations[1, 0], want.float(), rtol=1e-5, atol=1e-5)
    # ... which is what the reference (Luckfort/CD utils.LLM) reads: the output of HF's
    # model.layers.L.post_attention_layernorm at the last token
    seen = {}
    hooks = [layer.post_attention_layernorm.register_forward_hook(
        lambda m, i, o, k=k: seen.__setitem__(k, o[0, -1].detach()))
        for k, layer in enumerate(llama.hf_model.model.layers)]
    try:
        with torch.no_grad():
            llama.hf_model(**llama.tokenizer(ds.texts[3], return_tensors="pt"))
    finally:
        for h in hooks:
            h.remove()
    one = llama.capture([ds.texts[3]], sites="resid_mid.*")
    for k in range(3):
        with torch.no_grad():
            ours = llama.module("ln2", k)(one[f"resid_mid.{k}"][0])
        torch.testing.assert_close(ours, seen[k], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="representation"):
        probes.layer_sweep(llama, ds, representation="resid_pre")
    with pytest.raises(ValueError, match="resid_mid_normed"):
        probes.layer_sweep(llama, ds, sites="mlp_out.*", representation="resid_mid_normed")


def test_logit_lens_matches_hf_and_last_layer_is_final(llama):
    prompts = TEXTS[:3]
    lens = probes.logit_lens(llama, prompts)
    internal = probes.logit_lens(llama, prompts, norm=False)
    L = llama.n_layers
    assert lens.log_probs.shape == (L, 3, llama.vocab_size)
    assert float(lens.kl_to_final[-1]) == 0.0 and float(internal.kl_to_final[-1]) == 0.0
    hf = llama.hf_model
    enc = llama.tokenize(prompts)
    mask = enc["attention_mask"]
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)   # positions of real tokens
    with torch.no_grad():
        out = hf(**enc, position_ids=position_ids, output_hidden_states=True)
        for layer in range(L - 1):
            h = out.hidden_states[layer + 1][:, -1]       # left padding: last column = last token
            ref = torch.log_softmax(hf.lm_head(hf.model.norm(h)).double(), -1)
            np.testing.assert_allclose(lens.log_probs[layer].numpy(), ref.numpy(), atol=1e-4)
            ref_int = torch.log_softmax(hf.lm_head(h).double(), -1)
            np.testing.assert_allclose(internal.log_probs[layer].numpy(), ref_int.numpy(), atol=1e-4)
    final = torch.log_softmax(out.logits[:, -1].double(), -1)
    np.testing.assert_allclose(lens.log_probs[-1].numpy(), final.numpy(), atol=1e-4)


def test_attention_entropy_and_geometry_on_tiny_model(llama):
    ent = probes.attention_entropy(llama, TEXTS, batch_size=5)
    ent1 = probes.attention_entropy(llama, TEXTS, batch_size=1)
    assert ent.shape == (llama.n_layers, llama.n_heads)
    np.testing.assert_allclose(ent.numpy(), ent1.numpy(), rtol=1e-4)
    # a tiny random model attends almost uniformly: query i (0-based) over i + 1 real keys
    lengths = llama.tokenize(TEXTS)["attention_mask"].sum(1).tolist()
    uniform = np.mean([math.log(i + 1) for n in lengths for i in range(n)])
    np.testing.assert_allclose(ent.numpy(), uniform, atol=5e-3)
    geo = probes.site_geometry(llama, TEXTS * 2, sites="resid_post.0", ranks=(1, 4))
    rm, alpha = geo["resid_post.0"]
    assert 1.0 <= rm <= len(TEXTS) and alpha > 0
