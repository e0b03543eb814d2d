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
# # Concept probes layer by layer
#
# Capture the residual stream of the packaged SmolLM2-135M-Instruct at each prompt's last token, fit a linear probe per layer with group-aware cross-validation, and read off where a concept becomes linearly decodable (Jin et al. 2024, *Exploring Concept Depth*; Marks & Tegmark 2023, *The Geometry of Truth*). Selectivity is accuracy minus a shuffled-label control (Hewitt & Liang 2019). Small datasets keep it to about a minute on CPU.

# %%
import numpy as np

import hooked
import probes

model = hooked.load_model('smollm2-135m-instruct')
model

# %% [markdown]
# ## A built-in dataset
# True and false city statements from a shipped city->country table. Each city appears in one true and one false statement; the `groups` keep both in the same fold.

# %%
ds = probes.datasets.load('factual', n=80)
print(len(ds), ds.texts[:2], ds.labels[:2], ds.groups[:2])
assert len(ds) == 80 and set(ds.labels.tolist()) == {0, 1} and ds.groups[0] == ds.groups[1]

# %% [markdown]
# ## Capture once, sweep all layers
# `acts.stack` gives `[n_layers, N, d_model]`.

# %%
acts = model.capture(ds.texts, sites='resid_post.*', positions='last', batch_size=16)
X = acts.stack('resid_post.*')
print(X.shape)
factual = probes.sweep_activations(X, ds.labels, ds.groups, cv=5, method='logistic', name='factual',
                                   n_layers=model.n_layers, keep_activations=True)
print(factual.summary())
print('accuracy per layer:', np.round(factual.acc_mean, 2))
print('selectivity      :', np.round(factual.selectivity, 2))
assert X.shape == (model.n_layers, 80, model.d_model)
# near chance in the first layers, decodable from the middle on
assert max(factual.acc_mean[:4]) < 0.7 and factual.peak_acc > 0.85 and 5 <= factual.jump_layer <= 15

# %% [markdown]
# `layer_sweep` does the capture and the sweep in one call. Depth markers: the jump layer is the first layer clearly above chance (mean >= chance + `jump_margin` and the 95 % interval above chance); the converging layer starts the plateau (within `converge_eps` of the peak) that leads to the peak.

# %%
emotional = probes.layer_sweep(model, probes.datasets.load('emotional', n=80), cv=5, method='lda')
print(emotional.summary())
assert emotional.peak_acc > 0.9 and emotional.peak_layer < model.n_layers - 5

# %%
fig = probes.plot_depth({'factual': factual, 'emotional': emotional}, path='concept_depth.png',
                        title='Concept depth (SmolLM2-135M-Instruct)')
fig

# %% [markdown]
# ## Save a probe direction and turn it into a steering direction
# safetensors + JSON metadata; `to_steering` gives the `(site, direction, metadata)` triple the interventions package takes.

# %%
layer = factual.peak_layer
probe = factual.probe(layer)
path = probes.save_probe(probe, 'factual_probe', model=model, site=f'resid_post.{layer}', dataset='factual')
site, direction, meta = probes.to_steering(path)
print(site, direction.shape, round(meta['class_gap'], 3), meta['normalisation'])
assert site == f'resid_post.{layer}' and direction.shape == (model.d_model,) and abs(float(direction.norm()) - 1) < 1e-5

# %% [markdown]
# ## Logit lens and the internal layer policy
# The logit lens decodes each layer with the final norm and the unembedding; `norm=False` gives the BuPO internal layer policy (Tan et al. 2025). Both equal the model's output at the last layer.

# %%
prompts = ['The capital of France is', 'The opposite of hot is']
lens = probes.logit_lens(model, prompts)
internal = probes.logit_lens(model, prompts, norm=False)
tok = model.tokenizer
for layer in (10, 20, 25, model.n_layers - 1):
    print(layer, [tok.decode([t]) for t in lens.top_tokens[layer].tolist()],
          'entropy', round(float(lens.entropy[layer]), 2), 'KL', round(float(lens.kl_to_final[layer]), 2))
assert [tok.decode([t]) for t in lens.top_tokens[-1].tolist()] == [' Paris', ' cold']
assert float(lens.kl_to_final[-1]) < 1e-4 < float(lens.kl_to_final[10])  # the lens meets the output at the end
probes.plot_lens({'logit lens': lens, 'internal policy': internal})

# %% [markdown]
# ## Geometry and attention entropy

# %%
geo = probes.site_geometry(model, ds.texts[:40], sites=['resid_post.5', 'resid_post.15', 'resid_post.25'])
for site, (rm, alpha) in geo.items():
    print(f'{site}: RankMe {rm:.1f}  alpha-ReQ {alpha:.2f}')
ent = probes.attention_entropy(model, ds.texts[:8], layers=[0, 15, 29])
print('attention entropy per head (nats):')
print(np.round(ent.numpy(), 2))
assert all(1 < rm < 40 for rm, _ in geo.values()) and ent.shape[0] == 3
