"""Per-layer internals and causal localisation on tiny random Llamas with known differences."""
import math

import pytest
import torch

import hooked
from analyses import dpo
from analyses.dpo import causal, internals

PAIRS = dpo.knowledge_set(n=4)
PROMPTS = PAIRS.prompts[:3]


@pytest.fixture(scope="module")
def pair():
    ref = hooked.tiny_model("llama", seed=0, n_layers=3)
    twin = hooked.tiny_model("llama", seed=0, n_layers=3)  # same weights, separate hooks
    return ref, twin


def test_linear_cka_invariances():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 8, generator=g, dtype=torch.float64)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    assert internals.linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert internals.linear_cka(X, 3.0 * X @ Q + 5.0) == pytest.approx(1.0, abs=1e-10)
    assert internals.linear_cka(X, torch.randn(40, 8, generator=g, dtype=torch.float64)) < 0.5
    with pytest.raises(ValueError, match="same rows"):
        internals.linear_cka(X, X[:10])


def test_identical_pair_has_identical_per_layer_measures(pair):
    ref, twin = pair
    out = internals.per_layer_internals(ref, twin, PROMPTS, probe_datasets=("factual",), probe_n=40)
    rep = out["representation"]
    assert rep["cka"] == pytest.approx([1.0] * 3, abs=1e-9)
    assert rep["cosine"] == pytest.approx([1.0] * 3, abs=1e-6) and max(rep["relative_change"]) < 1e-6
    assert max(out["lens"]["kl"]) < 1e-9
    ke = out["knowledge_entropy"]
    assert ke["reference"] == pytest.approx(ke["policy"], abs=1e-9)
    g = out["geometry"]
    assert g["rankme_reference"] == pytest.approx(g["rankme_policy"], rel=1e-6)
    assert g["alpha_req_reference"] == pytest.approx(g["alpha_req_policy"], rel=1e-6)
    pt = out["probe_transfer"]["factual"]
    assert pt["cosine"] == pytest.approx([1.0] * 3, abs=1e-6)
    assert pt["ref_on_policy"] == pt["ref_on_ref"]


def test_identical_pair_needs_no_recovery(pair):
    ref, twin = pair
    loc = causal.localise(ref, twin, PAIRS)
    assert loc["M_shift"] == 0.0
    assert all(math.isnan(f) for f in loc["patch_policy_into_reference"] + loc["steering_recovered"])


def test_patching_localises_a_known_edit(pair):
    """The 'policy' is the reference plus a fixed vector added to resid_post.1: patching at layer >= 1
    recovers all of the shift (patching every layer recovers 100 %), at layer 0 none; the reverse patch
    removes it from layer 1 on; steering with the mean difference at layer 1 reproduces it exactly."""
    ref, twin = pair
    v = torch.randn(ref.d_model, generator=torch.Generator().manual_seed(1)) * 2.0
    with twin.hooks({"resid_post.1": lambda act, ctx: act + v}):
        loc = causal.localise(ref, twin, PAIRS)
        lp = dpo.pair_logprobs(twin, PAIRS)
    assert abs(loc["M_shift"]) > 1e-2
    assert loc["patch_policy_into_reference"] == pytest.approx([0.0, 1.0, 1.0], abs=1e-5)
    assert loc["patch_reference_into_policy"] == pytest.approx([0.0, 1.0, 1.0], abs=1e-5)
    assert loc["head_share"] == pytest.approx(0.0, abs=1e-5)
    assert loc["steering_recovered"][1] == pytest.approx(1.0, abs=1e-5)
    assert loc["steering_best_layer"] == 1 and loc["steering_delta_norm"][1] == pytest.approx(float(v.norm()), rel=1e-5)
    assert loc["steering_delta_norm"][0] == pytest.approx(0.0, abs=1e-6)
    ref_lp = dpo.pair_logprobs(ref, PAIRS)
    m = lambda d: (d["chosen"] - d["rejected"]).mean().item()  # noqa: E731
    assert loc["M_shift"] == pytest.approx(m(lp) - m(ref_lp), abs=1e-6)
    assert not twin.active_hooks or all(n == 0 for n in twin.active_hooks.values())


def test_bad_pairs_are_refused(pair):
    ref, _ = pair
    other = hooked.tiny_model("gpt2", seed=0, n_layers=3)
    with pytest.raises(ValueError, match="share one architecture.*'llama'.*'gpt2'"):
        dpo._common.check_pair(ref, other)
    small_vocab = hooked.tiny_model("llama", seed=0, n_layers=3, vocab_size=1000)
    with pytest.raises(ValueError, match="differ in vocab_size: 49152 vs 1000"):
        dpo._common.check_pair(ref, small_vocab)
    with pytest.raises(ValueError, match=r"out of range: this model has 3 layers \(0-2\)"):
        causal.localise(ref, ref, PAIRS, layers=[5])
