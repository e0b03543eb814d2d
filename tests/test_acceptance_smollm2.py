"""Acceptance on the packaged SmolLM2-135M-Instruct (real weights, offline)."""

import pytest
import torch

import hooked
from conftest import FP32_ATOL
from hooked import packaged

pytestmark = pytest.mark.acceptance


def test_loads_from_cache(smollm2_tl):
    assert packaged.cache_status("smollm2-135m-instruct") == "ok"
    assert smollm2_tl.n_layers == 30 and smollm2_tl.d_model == 576 and smollm2_tl.arch == "llama"
    assert getattr(smollm2_tl.hf_model.config, "quantization_config", None) is None  # trainable
    again = hooked.load_model("smollm2-135m-instruct", backend="nnsight")  # load time is measured in bench/
    assert again.hf_model.model.layers[3].mlp.up_proj.weight.equal(smollm2_tl.hf_model.model.layers[3].mlp.up_proj.weight)


def test_paris(smollm2_tl):
    text = smollm2_tl.generate(["The capital of France is"], max_new_tokens=8)[0]
    assert "Paris" in text


def test_resid_post_equals_hf_hidden_states(smollm2_tl, smollm2_hf):
    hf, tok = smollm2_hf
    prompt = "The Eiffel Tower is located in the city of"
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        hs = hf(**enc, output_hidden_states=True).hidden_states
    acts = smollm2_tl.capture([prompt], "resid_post.*", positions="all")
    for layer in range(smollm2_tl.n_layers - 1):
        torch.testing.assert_close(acts[f"resid_post.{layer}"], hs[layer + 1][0], atol=FP32_ATOL * 10, rtol=1e-5)
    final = smollm2_tl.capture([prompt], "final_norm", positions="all")["final_norm"]
    torch.testing.assert_close(final, hs[-1][0], atol=FP32_ATOL * 10, rtol=1e-5)


def test_gemma3_packaged_matches_hf():
    """The second packaged model (Gemma 3 270M base) loads from its cache and matches plain HF."""
    from transformers import AutoModelForCausalLM

    g = hooked.load_model("gemma-3-270m", backend="nnsight")
    assert g.arch == "gemma3_text" and g.spec.topology == "sandwich" and g.n_layers == 18 and g.d_model == 640
    hf = AutoModelForCausalLM.from_pretrained(str(packaged.model_cache_dir("gemma-3-270m")), attn_implementation="eager").eval()
    enc = g.tokenize(["The capital of France is"])
    assert enc["input_ids"][0, 0] == g.tokenizer.bos_token_id  # Gemma's tokenizer adds <bos> itself
    with torch.no_grad():
        hs = hf(**enc, output_hidden_states=True).hidden_states
    acts = g.capture(["The capital of France is"], ["resid_post.*", "final_norm"], positions="all")
    for layer in (0, 8, 16):
        torch.testing.assert_close(acts[f"resid_post.{layer}"], hs[layer + 1][0], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(acts["final_norm"], hs[-1][0], atol=1e-3, rtol=1e-4)
