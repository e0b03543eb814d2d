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
# # Latent chain-of-thought: train a tiny reasoner, intervene on its thoughts
#
# This walkthrough trains a small Coconut reasoner (Hao et al. 2024) on in-context pointer chasing, then
# applies step-wise do-interventions to its latent thoughts, as in Li et al. 2026, *Dynamics Within Latent
# Chain-of-Thought*. Everything runs on CPU in about a minute.
#
# The task: 8 edges of a random permutation (one token per edge, shuffled), a start node `s`; the chain of thought
# restates `s` and follows 3 edges, so the model thinks for K = 4 steps and answers the node 3 hops away.

# %%
import torch
from analyses.latent_cot import (ReasonerConfig, train_reasoner, evaluate, influence_matrix, necessity,
                                 plot_influence)
from interventions.latent_cot import LatentStats, make_operator, sweep_steps

torch.set_num_threads(1)   # tiny model: one thread is fastest
cfg = ReasonerConfig(task={"task": "pointer_chasing", "n_nodes": 8, "hops": 3}, seed=0)

# %% [markdown]
# ## Coconut curriculum
# Stage 0 learns the explicit chain of thought; stage k replaces the first k steps by latent thoughts (the last
# hidden state fed back as the next input embedding). Each stage resets the optimizer and keeps its best
# validation checkpoint.

# %%
explicit, hist0 = train_reasoner(cfg, steps_per_stage=[300])
reasoner, hist = train_reasoner(cfg, steps_per_stage=[80, 80, 80, 200], init=explicit, first_stage=1)
test = reasoner.task.sample(256, torch.Generator().manual_seed(123))
K = reasoner.n_steps
exact, latent_acc = evaluate(explicit, test, 0)["exact"], evaluate(reasoner, test, K)["answer"]
print("explicit CoT exact match:", exact)
print("latent (K=%d) answer accuracy:" % K, latent_acc)
assert exact > 0.9 and latent_acc > 0.9  # both solve the task; chance is 1/8

# %% [markdown]
# ## A do-intervention sweep
# `sweep_steps` applies one operator at each latent step, reusing the clean run's KV cache up to that step.
# Here: replace h_t by the mean latent of step t.

# %%
runner = reasoner.runner()
with torch.no_grad():
    clean = runner.rollout(test.question, n_latents=K, answer_ids=test.answer[:, None])
    stats = LatentStats.from_latents(clean.latents)
    sweep = sweep_steps(runner, test.question, n_latents=K, operator=make_operator("step_mean", stats),
                        answer_ids=test.answer[:, None])
for t, roll in sweep.by_step().items():
    m = necessity(clean, roll, test.answer)
    print(f"step {t}: acc {m['acc_clean']:.2f} -> {m['acc']:.2f}, KL {m['kl']:.3f}, dlogp {m['d_logp']:.2f}")
    assert m["acc_clean"] > 0.9 and m["acc"] < 0.5 and m["kl"] > 1  # every thought is needed

# %% [markdown]
# ## Influence matrix
# Row i: the intervened step; column j > i: the change at step j (KL of the answer read-out when the thought is
# closed after step j, and the distance of h_j in units of the mean latent norm). Locality is the share of the
# total influence on the t -> t+1 edges.

# %%
inf = influence_matrix(sweep, stats.mean_norm)
print("KL influence:\n", inf["kl"].numpy().round(3))
print("locality (KL):", round(inf["kl_summary"]["locality"], 3), " span:", round(inf["kl_summary"]["span"], 3))
later = torch.ones(K, K, dtype=torch.bool).triu(1)  # j > i: only later steps can be influenced
assert torch.isnan(inf["kl"][~later]).all() and (inf["kl"][later] > 1).all()
import tempfile, os
from IPython.display import Image
png = os.path.join(tempfile.mkdtemp(), "influence.png")
Image(filename=str(plot_influence(inf["kl"].numpy(), inf["distance"].numpy(), "step_mean", png)))

# %% [markdown]
# `analyses.latent_cot.run_study(out_dir, profile="quick")` runs all of this (every operator, the pause-token
# control, decidability, answer modes) and writes the plots and a JSON of every number.
