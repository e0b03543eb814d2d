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
# # Steering vectors at inference
#
# Extract a sentiment vector from built-in contrastive pairs (CAA mean difference, Rimsky et al. 2024), attach it to the packaged SmolLM2-135M-Instruct while it generates, and measure the effect: a multiplier sweep of the logit difference ` good` - ` bad`, per-example steerability (Tan et al. 2024), the side-effect KL on neutral prompts, and the lexicon sentiment of the continuations. Runs on CPU in about a minute.

# %%
import torch

import hooked
import interventions as iv

model = hooked.load_model('smollm2-135m-instruct')
model

# %% [markdown]
# ## Extract
# Each pair differs only in its sentiment word; activations are read at each prompt's last real token (left padding never shifts the read position).

# %%
pairs = iv.data.sentiment_pairs()[:16]
print(pairs[0])
vec = iv.extract(model, pairs, 'resid_post.12', method='mean_diff')
vec

# %%
# safetensors + JSON; loading runs no code
vec.save('sentiment_vec')
vec = iv.SteeringVector.load('sentiment_vec')
print(vec.method, vec.read_position, vec.n_pairs, vec.version)
assert vec.method == 'mean_diff' and vec.n_pairs == 16

# %% [markdown]
# ## Attach while generating
# `vec.apply(...)` returns a handle: a context manager, or keep it and call `.remove()`. With the KV cache on, every decode step is a one-token forward and is steered too.

# %%
prompts = ['My thoughts on the new movie:', 'The meeting this morning was']
scores = {}
for m in (-4.0, 0.0, 4.0):
    with vec.apply(model, multiplier=m, positions='all'):
        outs = model.generate(prompts, max_new_tokens=16)
    scores[m] = [iv.data.sentiment_score(o) for o in outs]
    for p, o, score in zip(prompts, outs, scores[m]):
        print(f'{m:+.0f}  score={score:+.3f}  {p}{o!r}')
assert sum(scores[4.0]) > sum(scores[-4.0])  # the continuations turn more positive

# %%
handle = vec.apply(model, multiplier=4.0, positions='generated')  # prompt pass untouched
print(handle, model.active_hooks)
print(model.generate(prompts[:1], max_new_tokens=12))
handle.remove()
assert model.active_hooks == {}

# %% [markdown]
# ## Measure
# Logit difference ` good` - ` bad` at the last token, per example, at each multiplier.

# %%
sweep = iv.multiplier_sweep(model, vec, iv.data.NEUTRAL_PROMPTS[:4], ' good', ' bad', multipliers=[-4, -2, 0, 2, 4])
print('mean logit diff:', [round(x, 2) for x in sweep.mean_metric.tolist()])
print('steerability (mean slope):', round(sweep.steerability, 3), ' anti-steerable fraction:', sweep.anti_steerable_fraction)
kl = iv.side_effect_kl(model, vec, iv.data.NEUTRAL_PROMPTS[4:], 4.0)
print('side-effect KL at m=4 (nats/token):', round(kl, 4))
mean = sweep.mean_metric.tolist()
assert all(b > a for a, b in zip(mean, mean[1:])), 'the logit difference must rise with the multiplier'
assert sweep.steerability > 0.3 and sweep.anti_steerable_fraction == 0 and 0 < kl < 2

# %% [markdown]
# ## Other operators
# `ablate` removes the component along the vector, `clamp` sets it; directional ablation at every layer (Arditi et al. 2024) is `iv.ablate_direction`.

# %%
u = vec['resid_post.12'] / vec['resid_post.12'].norm()
with vec.apply(model, multiplier=1.0, operator='ablate'):
    acts = model.capture(prompts, 'resid_post.12', positions='all')['resid_post.12']
print('max |x . u| after ablation:', float((acts @ u).abs().max()))
assert float((acts @ u).abs().max()) < 1e-3  # nothing left along the vector
with iv.ablate_direction(model, vec['resid_post.12']):
    print(model.generate(prompts[:1], max_new_tokens=12))
