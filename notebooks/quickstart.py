# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # policylens quickstart: load, capture, hook, generate
#
# Loads the packaged SmolLM2-135M-Instruct offline (dequantized once, cached as safetensors), captures activations by site name, and applies a hook during generation. Everything here is the public `hooked` API.

# %%
import torch
import hooked

model = hooked.load_model("smollm2-135m-instruct", backend="tl")  # or backend="nnsight"
model

# %% [markdown]
# ## Sites
# One vocabulary on every architecture; wildcards expand, and unknown names are errors that list the valid ones.

# %%
print(model.sites("resid_post.*")[:3], '...')
try:
    model.sites("resid_post.40")
    raise AssertionError("an out-of-range site must be an error")
except ValueError as e:
    print(e)
    assert "30 layers (0-29)" in str(e)

# %% [markdown]
# ## Capture
# Left-padded batches; `positions` counts real tokens only. The forward stops after the deepest site asked for.

# %%
prompts = ["The capital of France is", "Berlin is the capital of", "Two plus two equals"]
acts = model.capture(prompts, ["resid_post.*", "mlp.hidden.10", "attn.pattern.5"], positions="last")
print({s: tuple(acts[s].shape) for s in ["resid_post.0", "mlp.hidden.10", "attn.pattern.5"]})
norms = acts.stack("resid_post.*").norm(dim=-1).mean(1)
print("mean residual norm by layer:", [round(float(x), 1) for x in norms[::5]])
assert acts["resid_post.0"].shape == (3, model.d_model) and acts["mlp.hidden.10"].shape == (3, model.d_mlp)
assert norms[-1] > 5 * norms[0]  # the residual stream grows with depth

# %%
ragged = model.capture(prompts, "resid_post.12", positions="all")
print(ragged["resid_post.12"].shape, ragged.index[:6].tolist())  # rows of (prompt, token)
print(model.to_str_tokens(prompts[0]))
assert len(ragged["resid_post.12"]) == sum(len(model.to_str_tokens(p)) for p in prompts)  # real tokens only

# %% [markdown]
# ## Hooks
# `fn(act, ctx)` returns a replacement or `None`. `ctx.positions` indexes real tokens (−1 = padding), `ctx.is_generated` marks generated tokens. Handles remove their hooks on exit, even after an exception.

# %%
plain = model.generate(["The capital of France is"], max_new_tokens=6)
print(plain)
def damp(act, ctx):
    return act * 0.0 + act.mean(dim=(0, 1), keepdim=True)  # erase token information at layer 3
with model.hooks({"resid_post.3": damp}):
    damped = model.generate(["The capital of France is"], max_new_tokens=6)
print(damped)
print("hooks left:", model.active_hooks)
assert "Paris" in plain[0] and "Paris" not in damped[0] and model.active_hooks == {}

# %% [markdown]
# ## Save and load
# Artifacts are safetensors + JSON; loading runs no code.

# %%
import tempfile, pathlib
d = pathlib.Path(tempfile.mkdtemp()) / "acts"
acts.save(d)
back = hooked.ActivationSet.load(d)
assert torch.equal(back["resid_post.7"], acts["resid_post.7"])
sorted(p.name for p in d.iterdir())
