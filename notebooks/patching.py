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
# # Activation patching
#
# Run a clean and a corrupted prompt, copy the clean activation at one site x position into the corrupted run, and measure the fraction of the logit difference recovered: `(M_patched - M_corrupted) / (M_clean - M_corrupted)`. First by hand with `model.hooks`, then with `iv.activation_patching` and its heatmap, then across two models of the same architecture.

# %%
import math

import torch

import hooked
import interventions as iv

model = hooked.load_model('smollm2-135m-instruct')
clean, corrupted = 'The Eiffel Tower is in the city of', 'The Colosseum is in the city of'
paris, rome = model.tokenizer.encode(' Paris')[0], model.tokenizer.encode(' Rome')[0]
print(model.to_str_tokens(clean), model.to_str_tokens(corrupted), sep='\n')


# %% [markdown]
# ## By hand, in a script
# Save the clean activation with one hook, write it into the corrupted run with another.

# %%
def logit_diff(logits):
    return float(logits[0, -1, paris] - logits[0, -1, rome])

saved = {}
def save(act, ctx):
    saved['act'] = act.clone()

site, pos = 'resid_post.6', 3  # the last subject token (' Tower' / 'um')
m_clean = logit_diff(model.run_with_hooks(clean, hooks={site: save}))
m_corrupt = logit_diff(model.run_with_hooks(corrupted))

def patch(act, ctx):
    out = act.clone()
    sel = ctx.positions == pos  # index among real tokens
    out[sel] = saved['act'][sel]
    return out

m_patched = logit_diff(model.run_with_hooks(corrupted, hooks={site: patch}))
recovered = iv.fraction_recovered(m_patched, m_clean, m_corrupt)
print(f'clean {m_clean:.2f}  corrupted {m_corrupt:.2f}  patched {m_patched:.2f}  recovered {recovered:.2f}')
assert m_clean > 0 > m_corrupt and 0.3 < recovered < 0.6  # Paris wins on the clean prompt, Rome on the corrupted one

# %% [markdown]
# ## Every site x position
# Every layer's residual stream, each position (the positions of one site run as one batched forward).

# %%
res = iv.activation_patching(model, clean, corrupted, sites='resid_post.*',
                             positions='each', answers=(' Paris', ' Rome'))
print('clean', round(res.clean_metric, 2), 'corrupted', round(res.corrupted_metric, 2))
# the batched sweep agrees with the patch made by hand above
assert math.isclose(res.clean_metric, m_clean, abs_tol=1e-3) and math.isclose(res.corrupted_metric, m_corrupt, abs_tol=1e-3)
assert math.isclose(float(res.recovered[res.sites.index(site), res.positions.index(pos)]), recovered, abs_tol=1e-3)
fig = res.plot(title='Eiffel Tower -> Colosseum: fraction of logit diff recovered')
fig

# %%
last = f'resid_post.{model.n_layers - 1}'
full = iv.activation_patching(model, clean, corrupted, sites=last, positions='all', answers=(' Paris', ' Rome'))
print('patching the whole last layer recovers', float(full.recovered[0, 0]))
assert math.isclose(float(full.recovered[0, 0]), 1.0, abs_tol=1e-4)  # the last layer carries the whole clean run

# %% [markdown]
# ## Across two models
# The clean activations can come from another model with the same architecture (`source_model=`), e.g. a DPO-trained policy and its reference. Here two tiny random Llamas show the API.

# %%
a, b = hooked.tiny_model('llama', seed=0), hooked.tiny_model('llama', seed=1)
xa = a.tokenizer.encode(' Paris')[0]
metric = lambda logits: float(logits[:, -1, xa].mean())
cross = iv.activation_patching(b, clean, corrupted, sites='resid_post.*', positions='all', metric=metric, source_model=a)
print(cross.sites, cross.recovered.squeeze(1).tolist())
assert cross.sites == [f'resid_post.{i}' for i in range(b.n_layers)] and cross.recovered.shape == (b.n_layers, 1)
