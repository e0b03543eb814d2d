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
# # Knowledge entropy
#
# Kim et al. 2024 (*Knowledge Entropy Decay during Language Model Pretraining Hinders New Knowledge Acquisition*) read each FFN as a memory: the coefficient of slot i is the input of the down projection (`mlp.hidden.L`). Knowledge entropy (their Eq. 2) is the entropy of the mean absolute coefficients, normalised over the slots, summed over layers. Padding tokens are excluded here.

# %%
import math

import numpy as np

import hooked
import probes

model = hooked.load_model('smollm2-135m-instruct')
texts = probes.datasets.load('factual').texts[:12] + probes.datasets.load('emotional').texts[:12]
ke = probes.knowledge_entropy(model, texts, batch_size=8)
print(ke)
print('per layer:', np.round(ke.per_layer.numpy(), 3))
print('uniform would give', round(math.log(model.d_mlp), 3), 'per layer')
assert math.isclose(ke.total, float(ke.per_layer.sum()), rel_tol=1e-6)
assert (ke.per_layer < math.log(model.d_mlp)).all() and 200 < ke.total < 215  # below uniform in every layer

# %% [markdown]
# ## Resuscitation (Algorithm 1)
# Slots at or below the p-quantile of their layer's mean coefficient get their up-projection rows multiplied by q * mean / c_i. The handle undoes it.

# %%
with probes.resuscitate(model, coefficients=ke, p=0.5, q=2.0, layers=[0]) as handle:
    after = probes.knowledge_entropy(model, texts, batch_size=8)
    idx = handle.selected[0]
    print('layer 0 selected slots: mean coefficient', round(float(after.coefficients[0, idx].mean()), 4),
          'target q*mean =', round(float(2 * ke.coefficients[0].mean()), 4))
    print('layer 0 entropy', round(float(ke.per_layer[0]), 4), '->', round(float(after.per_layer[0]), 4))
restored = probes.knowledge_entropy(model, texts, batch_size=8)
print('restored total equals original:', math.isclose(restored.total, ke.total, rel_tol=1e-6))
# Algorithm 1 lifts the selected slots to q * mean exactly, which flattens layer 0; the handle restores the weights
assert math.isclose(float(after.coefficients[0, idx].mean()), float(2 * ke.coefficients[0].mean()), rel_tol=1e-3)
assert after.per_layer[0] > ke.per_layer[0] and math.isclose(restored.total, ke.total, rel_tol=1e-6)

# %% [markdown]
# ## Across pretraining, at a scale a CPU can run
# `analyses.pretraining_entropy.run` trains a tiny Llama from scratch on generated facts, saves checkpoints and measures knowledge entropy at each. The `smoke` profile below takes seconds; `profile='quick'` (a few minutes) and `'full'` give the numbers reported in the project notes.

# %%
from analyses import pretraining_entropy

result = pretraining_entropy.run('pretraining_smoke', profile='smoke', progress=False, n_eval_texts=32)
for step, h, loss in zip(result['steps'], result['knowledge_entropy'], result['eval_loss']):
    print(f'step {step:4d}: knowledge entropy {h:.4f} nats, loss {loss:.3f}')
print('declines:', result['declines'], ' spearman(step, entropy):', result['spearman'])
assert result['declines'] and result['knowledge_entropy'][-1] < result['knowledge_entropy'][0]

# %%
probes.plot_knowledge_entropy(result['steps'], result['knowledge_entropy'], result['per_layer'])
