"""Accelerate-dispatched models: layers offloaded to disk give the numbers of the in-memory model.

Inputs go to the embedding's execution device and hook values stay where the layer runs;
the caller's dispatched model is wrapped without copying its weights.
"""

import pytest
import torch

import hooked
import interventions as iv

PROMPTS = ["hello there my friend", "hi"]
DEVICE_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
              "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny-llama")
    ref, tok = hooked.tiny_hf_model("llama", seed=3, n_layers=3)
    ref.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("backend", ["tl", "nnsight"])
def test_disk_offloaded_model_equals_in_memory(saved, backend):
    base = hooked.load_model(saved, backend=backend)
    off = hooked.load_model(saved, backend=backend, device_map=DEVICE_MAP, offload_folder=str(saved / "offload"))
    assert off.module("layer", 1).self_attn.q_proj.weight.device.type == "meta"  # really offloaded
    assert off.device == torch.device("cpu")
    a = base.capture(PROMPTS, "*", positions="all")
    b = off.capture(PROMPTS, "*", positions="all")
    for s in a.sites:
        torch.testing.assert_close(a[s], b[s], atol=0, rtol=0, msg=s)
    vec = iv.SteeringVector({"resid_post.1": torch.randn(base.d_model, generator=torch.Generator().manual_seed(0))})
    with vec.apply(base, 2.0), vec.apply(off, 2.0):
        torch.testing.assert_close(base.logits(PROMPTS), off.logits(PROMPTS), atol=0, rtol=0)
        assert base.generate_ids(PROMPTS, max_new_tokens=4) == off.generate_ids(PROMPTS, max_new_tokens=4)
    pa = iv.activation_patching(base, ["The cat sat"], ["The dog sat"], "resid_post.*", answers=(" on", " in"))
    pb = iv.activation_patching(off, ["The cat sat"], ["The dog sat"], "resid_post.*", answers=(" on", " in"))
    torch.testing.assert_close(pa.patched_metric, pb.patched_metric, atol=0, rtol=0)
    assert off.active_hooks == {}
