"""Directional ablation (Arditi et al. 2024) on tiny models: the hook form removes the
direction from the residual stream at every layer, and weight orthogonalisation gives
the same logits; restoring the weights is exact."""

import pytest
import torch

import hooked
import interventions as iv

PROMPTS = ["hello there my friend", "hi", "The weather today is quite"]


def _logits(model):
    """Logits at real tokens only (the hook form never writes padding slots; the weight edit does)."""
    enc = model.tokenize(PROMPTS)
    return model.forward(enc["input_ids"], enc["attention_mask"])[enc["attention_mask"].bool()]


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "phi3", "falcon", "granite", "starcoder2"])
@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_hooks_and_weights_agree(arch, backend):
    model = hooked.tiny_model(arch, seed=0, n_layers=2, backend=backend)
    r = torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))
    u = r / r.norm()
    base = _logits(model)
    sites = [f"resid_post.{i}" for i in range(model.n_layers)] + ["resid_pre.0"]
    sites += [] if model.spec.parallel else ["resid_mid.1"]
    before = model.capture(PROMPTS, sites, positions="all")
    with iv.ablate_direction(model, r) as h:
        assert len(model.active_hooks) == 1 + 2 * model.n_layers
        hooked_logits = _logits(model)
        acts = model.capture(PROMPTS, sites, positions="all")
    assert model.active_hooks == {} and not h.active
    for s in sites:
        assert (before[s] @ u).abs().max() > 1e-3, s
        assert (acts[s] @ u).abs().max() < 1e-4, s  # no component along u anywhere in the residual stream
    assert (hooked_logits - base).abs().max() > 1e-4
    tied = model.hf_model.get_output_embeddings().weight is model.hf_model.get_input_embeddings().weight
    with iv.orthogonalize_weights(model, r):
        weight_logits = _logits(model)
        assert model.active_hooks == {}
    assert torch.allclose(weight_logits, hooked_logits, atol=1e-4), float((weight_logits - hooked_logits).abs().max())
    # restored exactly, ties included
    assert torch.equal(_logits(model), base)
    assert (model.hf_model.get_output_embeddings().weight is model.hf_model.get_input_embeddings().weight) == tied


def test_bad_direction_and_gemma_weights():
    model = hooked.tiny_model("llama", seed=0, n_layers=2)
    with pytest.raises(ValueError, match="shape"):
        iv.ablate_direction(model, torch.randn(model.d_model + 1))
    with pytest.raises(ValueError, match="NaN/inf"):
        iv.ablate_direction(model, torch.full((model.d_model,), float("nan")))
    with pytest.raises(ValueError, match="non-zero"):
        iv.orthogonalize_weights(model, torch.zeros(model.d_model))
    two = iv.SteeringVector({"resid_post.0": torch.ones(64), "resid_post.1": torch.ones(64)})
    with pytest.raises(ValueError, match="one direction"):
        iv.ablate_direction(model, two)
    assert model.active_hooks == {}
    for arch, why in (("gemma3", "post-feedforward norms"), ("olmo2", "post-feedforward norms"),
                      ("mixtral", "expert")):
        other = hooked.tiny_model(arch, seed=0, n_layers=1)
        with pytest.raises(ValueError, match=why):
            iv.orthogonalize_weights(other, torch.ones(other.d_model))


def test_nnsight_backend_ablation_and_patching_match_tl():
    tl = hooked.tiny_model("llama", seed=0, n_layers=2)
    nn = hooked.tiny_model("llama", seed=0, n_layers=2, backend="nnsight")
    r = torch.randn(tl.d_model, generator=torch.Generator().manual_seed(5))
    with iv.ablate_direction(tl, r), iv.ablate_direction(nn, r):
        a, b = _logits(tl), _logits(nn)
    assert torch.allclose(a, b, atol=1e-4)
    clean, corrupt = ["The cat sat on the mat"], ["The cat sat on the rug"]
    metric = lambda logits: float(logits[0, -1, 100] - logits[0, -1, 200])  # noqa: E731
    res_tl = iv.activation_patching(tl, clean, corrupt, "resid_post.*", positions=[4, 5], metric=metric)
    res_nn = iv.activation_patching(nn, clean, corrupt, "resid_post.*", positions=[4, 5], metric=metric)
    assert torch.allclose(res_tl.recovered, res_nn.recovered, atol=1e-4)
    assert nn.active_hooks == {} and tl.active_hooks == {}
