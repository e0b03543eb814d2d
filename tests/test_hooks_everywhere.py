"""No entry point ignores active hooks: each one that runs the model honours a hook that forces
one token, or refuses with an error that says why (it must run the plain model)."""

import pytest
import torch

import hooked
from analyses.dpo import did, policy
from interventions.latent_cot import LatentRunner

FORCED = 42
PROMPTS = ["hello there my friend", "hi"]


def force(act, ctx):
    out = act.clone()
    out[..., FORCED] = out.abs().amax(-1) * 10 + 100
    return out


@pytest.fixture(scope="module", params=["tl", "nnsight"])
def model(request):
    return hooked.tiny_model("llama", seed=0, n_layers=2, backend=request.param)


def test_entry_points_that_run_hooks_honour_them(model):
    with model.hooks({"logits": force}):
        assert all(row == [FORCED] * 3 for row in model.generate_ids(PROMPTS, max_new_tokens=3, stop_at_eos=False))
        assert all(row == [FORCED] * 3 for row in model.generate_ids(PROMPTS, max_new_tokens=3, stop_at_eos=False,
                                                                    use_cache=False))
        assert (model.logits(PROMPTS).argmax(-1) == FORCED).all()
        assert (model.capture(PROMPTS, "logits", positions="all")["logits"].argmax(-1) == FORCED).all()
        enc = model.tokenize(PROMPTS)
        assert (model.forward(enc["input_ids"], enc["attention_mask"]).argmax(-1)[enc["attention_mask"].bool()]
                == FORCED).all()
        forced_text = model.tokenizer.decode([FORCED])
        lp = policy.sequence_logprobs(model, PROMPTS, [forced_text] * 2, add_eos=False)
        assert torch.allclose(lp, torch.zeros_like(lp), atol=1e-4)  # log p(forced token) = 0 under the hook
    assert model.active_hooks == {}


def test_entry_points_that_run_the_plain_model_refuse(model):
    runner = LatentRunner(model, bot_id=3, eot_id=4)
    ids = model.tokenize(PROMPTS)
    with model.hooks({"logits": force}):
        with pytest.raises(RuntimeError, match="would ignore"):
            policy.sample(model, PROMPTS, k=1, max_new_tokens=2)
        with pytest.raises(RuntimeError, match="would ignore"):
            did.did_entropy(model, model, PROMPTS, k=2, max_new_tokens=2)
        with pytest.raises(RuntimeError, match="would ignore"):
            runner.rollout(ids["input_ids"], ids["attention_mask"], n_latents=1)
    assert model.active_hooks == {}
    runner.rollout(ids["input_ids"], ids["attention_mask"], n_latents=1)  # fine once the hooks are gone
