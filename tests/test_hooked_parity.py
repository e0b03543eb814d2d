"""TL backend == nnsight backend == plain HF on four families, against hand-written HF references.

(Every other family is covered by tests/test_arch_families.py; this file keeps a reference
that does not use policylens' architecture descriptions at all.)"""

import pytest
import torch

import hooked
from conftest import FP32_ATOL
from hf_reference import reference_sites

pytestmark = pytest.mark.parity

PROMPTS = ["The capital of France is", "Hi", "One two three four five six seven"]


@pytest.fixture(scope="module", params=["llama", "gemma3", "gpt2", "qwen2"])
def trio(request):
    arch = request.param
    ref, _ = hooked.tiny_hf_model(arch, seed=1)
    return arch, ref, hooked.tiny_model(arch, seed=1, backend="tl"), hooked.tiny_model(arch, seed=1, backend="nnsight")


@pytest.mark.parametrize("layer", [0, 2])
def test_every_site_matches_hf_one_by_one(trio, layer):
    """A left-padded batch captured with positions='all' equals plain HF run on each prompt alone."""
    arch, ref, tl, nn = trio
    sites = [s for s in tl.sites("*") if (s.endswith(f".{layer}") or "." not in s) and not s.startswith("attn.q")
             and not s.startswith("attn.k") and not s.startswith("attn.v")]
    got = {b.backend: b.capture(PROMPTS, sites, positions="all") for b in (tl, nn)}
    for p_idx, prompt in enumerate(PROMPTS):
        enc = tl.tokenize([prompt])
        want = reference_sites(ref, enc["input_ids"], enc["attention_mask"], layer)
        n = enc["input_ids"].shape[1]
        for backend, acts in got.items():
            rows = acts.index[:, 0] == p_idx
            assert acts.index[rows, 1].tolist() == list(range(n))
            for site in sites:
                w = want[site]
                if site.startswith("attn.pattern"):
                    w = w[0].permute(1, 0, 2)  # [T_q, H, T_k]
                    g = acts[site][rows][..., :n]
                    assert acts[site][rows][..., n:].abs().max() == 0 if acts[site].shape[-1] > n else True
                else:
                    g = acts[site][rows]
                    w = w[0]
                torch.testing.assert_close(g, w, atol=FP32_ATOL, rtol=0, msg=f"{arch}/{backend}/{site}/prompt {p_idx}")


def test_backends_agree_on_last_and_mean(trio):
    arch, ref, tl, nn = trio
    for positions in ("last", "mean", 0, -1):
        a = tl.capture(PROMPTS, ["resid_post.*", "mlp.hidden.1", "logits"], positions=positions)
        b = nn.capture(PROMPTS, ["resid_post.*", "mlp.hidden.1", "logits"], positions=positions)
        for s in a.sites:
            torch.testing.assert_close(a[s], b[s], atol=FP32_ATOL, rtol=0, msg=f"{arch}/{positions}/{s}")


def test_padded_batch_equals_one_by_one(trio):
    arch, ref, tl, nn = trio
    for m in (tl, nn):
        batch = m.capture(PROMPTS, ["resid_post.*", "attn.pattern.1"], positions="last", batch_size=3)
        for i, p in enumerate(PROMPTS):
            alone = m.capture([p], ["resid_post.*", "attn.pattern.1"], positions="last")
            for s in batch.sites:
                k = alone[s].shape[-1]
                torch.testing.assert_close(batch[s][i, ..., :k], alone[s][0], atol=FP32_ATOL, rtol=0)


def test_generate_matches_hf_greedy(trio):
    arch, ref, tl, nn = trio
    enc = tl.tokenize(PROMPTS)
    pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        hf = ref.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tl.tokenizer.pad_token_id,
                          eos_token_id=None)
    want = hf[:, enc["input_ids"].shape[1]:].tolist()
    for m in (tl, nn):
        assert m.generate_ids(PROMPTS, max_new_tokens=6, stop_at_eos=False) == want
        assert m.generate_ids(PROMPTS, max_new_tokens=6, stop_at_eos=False, use_cache=False) == want
    assert pos.shape == enc["input_ids"].shape
