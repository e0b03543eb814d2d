"""Write notebooks/probes.ipynb and notebooks/knowledge_entropy.ipynb (outputs stripped) with nbformat.

Run: python notebooks/build_probes_notebooks.py
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

PROBES = [
    new_markdown_cell(
        "# Concept probes layer by layer\n\n"
        "Capture the residual stream of the packaged SmolLM2-135M-Instruct at each prompt's last token, fit a "
        "linear probe per layer with group-aware cross-validation, and read off where a concept becomes linearly "
        "decodable (Jin et al. 2024, *Exploring Concept Depth*; Marks & Tegmark 2023, *The Geometry of Truth*). "
        "Selectivity is accuracy minus a shuffled-label control (Hewitt & Liang 2019). Small datasets keep it "
        "to about a minute on CPU."
    ),
    new_code_cell(
        "import numpy as np\n\nimport hooked\nimport probes\n\n"
        "model = hooked.load_model('smollm2-135m-instruct')\nmodel"
    ),
    new_markdown_cell(
        "## A built-in dataset\nTrue and false city statements from a shipped city->country table. Each city "
        "appears in one true and one false statement; the `groups` keep both in the same fold."
    ),
    new_code_cell(
        "ds = probes.datasets.load('factual', n=80)\n"
        "print(len(ds), ds.texts[:2], ds.labels[:2], ds.groups[:2])"
    ),
    new_markdown_cell("## Capture once, sweep all layers\n`acts.stack` gives `[n_layers, N, d_model]`."),
    new_code_cell(
        "acts = model.capture(ds.texts, sites='resid_post.*', positions='last', batch_size=16)\n"
        "X = acts.stack('resid_post.*')\nprint(X.shape)\n"
        "factual = probes.sweep_activations(X, ds.labels, ds.groups, cv=5, method='logistic', name='factual',\n"
        "                                   n_layers=model.n_layers, keep_activations=True)\n"
        "print(factual.summary())\n"
        "print('accuracy per layer:', np.round(factual.acc_mean, 2))\n"
        "print('selectivity      :', np.round(factual.selectivity, 2))"
    ),
    new_markdown_cell(
        "`layer_sweep` does the capture and the sweep in one call. Depth markers: the jump layer is the first "
        "layer clearly above chance (mean >= chance + `jump_margin` and the 95 % interval above chance); the "
        "converging layer starts the plateau (within `converge_eps` of the peak) that leads to the peak."
    ),
    new_code_cell(
        "emotional = probes.layer_sweep(model, probes.datasets.load('emotional', n=80), cv=5, method='lda')\n"
        "print(emotional.summary())"
    ),
    new_code_cell(
        "fig = probes.plot_depth({'factual': factual, 'emotional': emotional}, path='concept_depth.png',\n"
        "                        title='Concept depth (SmolLM2-135M-Instruct)')\nfig"
    ),
    new_markdown_cell(
        "## Save a probe direction and turn it into a steering direction\nsafetensors + JSON metadata; "
        "`to_steering` gives the `(site, direction, metadata)` triple the interventions package takes."
    ),
    new_code_cell(
        "layer = factual.peak_layer\nprobe = factual.probe(layer)\n"
        "path = probes.save_probe(probe, 'factual_probe', model=model, site=f'resid_post.{layer}', dataset='factual')\n"
        "site, direction, meta = probes.to_steering(path)\n"
        "print(site, direction.shape, round(meta['class_gap'], 3), meta['normalisation'])"
    ),
    new_markdown_cell(
        "## Logit lens and the internal layer policy\nThe logit lens decodes each layer with the final norm and "
        "the unembedding; `norm=False` gives the BuPO internal layer policy (Tan et al. 2025). Both equal the "
        "model's output at the last layer."
    ),
    new_code_cell(
        "prompts = ['The capital of France is', 'The opposite of hot is']\n"
        "lens = probes.logit_lens(model, prompts)\ninternal = probes.logit_lens(model, prompts, norm=False)\n"
        "tok = model.tokenizer\n"
        "for layer in (10, 20, 25, model.n_layers - 1):\n"
        "    print(layer, [tok.decode([t]) for t in lens.top_tokens[layer].tolist()],\n"
        "          'entropy', round(float(lens.entropy[layer]), 2), 'KL', round(float(lens.kl_to_final[layer]), 2))\n"
        "probes.plot_lens({'logit lens': lens, 'internal policy': internal})"
    ),
    new_markdown_cell("## Geometry and attention entropy"),
    new_code_cell(
        "geo = probes.site_geometry(model, ds.texts[:40], sites=['resid_post.5', 'resid_post.15', 'resid_post.25'])\n"
        "for site, (rm, alpha) in geo.items():\n"
        "    print(f'{site}: RankMe {rm:.1f}  alpha-ReQ {alpha:.2f}')\n"
        "ent = probes.attention_entropy(model, ds.texts[:8], layers=[0, 15, 29])\n"
        "print('attention entropy per head (nats):')\nprint(np.round(ent.numpy(), 2))"
    ),
]

KNOWLEDGE = [
    new_markdown_cell(
        "# Knowledge entropy\n\n"
        "Kim et al. 2024 (*Knowledge Entropy Decay during Language Model Pretraining Hinders New Knowledge "
        "Acquisition*) read each FFN as a memory: the coefficient of slot i is the input of the down "
        "projection (`mlp.hidden.L`). Knowledge entropy (their Eq. 2) is the entropy of the mean absolute "
        "coefficients, normalised over the slots, summed over layers. Padding tokens are excluded here."
    ),
    new_code_cell(
        "import math\n\nimport numpy as np\n\nimport hooked\nimport probes\n\n"
        "model = hooked.load_model('smollm2-135m-instruct')\n"
        "texts = probes.datasets.load('factual').texts[:12] + probes.datasets.load('emotional').texts[:12]\n"
        "ke = probes.knowledge_entropy(model, texts, batch_size=8)\n"
        "print(ke)\nprint('per layer:', np.round(ke.per_layer.numpy(), 3))\n"
        "print('uniform would give', round(math.log(model.d_mlp), 3), 'per layer')"
    ),
    new_markdown_cell(
        "## Resuscitation (Algorithm 1)\nSlots at or below the p-quantile of their layer's mean coefficient get "
        "their up-projection rows multiplied by q * mean / c_i. The handle undoes it."
    ),
    new_code_cell(
        "with probes.resuscitate(model, coefficients=ke, p=0.5, q=2.0, layers=[0]) as handle:\n"
        "    after = probes.knowledge_entropy(model, texts, batch_size=8)\n"
        "    idx = handle.selected[0]\n"
        "    print('layer 0 selected slots: mean coefficient', round(float(after.coefficients[0, idx].mean()), 4),\n"
        "          'target q*mean =', round(float(2 * ke.coefficients[0].mean()), 4))\n"
        "    print('layer 0 entropy', round(float(ke.per_layer[0]), 4), '->', round(float(after.per_layer[0]), 4))\n"
        "restored = probes.knowledge_entropy(model, texts, batch_size=8)\n"
        "print('restored total equals original:', math.isclose(restored.total, ke.total, rel_tol=1e-6))"
    ),
    new_markdown_cell(
        "## Across pretraining, at a scale a CPU can run\n`analyses.pretraining_entropy.run` trains a tiny Llama "
        "from scratch on generated facts, saves checkpoints and measures knowledge entropy at each. The `smoke` "
        "profile below takes seconds; `profile='quick'` (a few minutes) and `'full'` give the numbers reported "
        "in the project notes."
    ),
    new_code_cell(
        "from analyses import pretraining_entropy\n\n"
        "result = pretraining_entropy.run('pretraining_smoke', profile='smoke', progress=False, n_eval_texts=32)\n"
        "for step, h, loss in zip(result['steps'], result['knowledge_entropy'], result['eval_loss']):\n"
        "    print(f'step {step:4d}: knowledge entropy {h:.4f} nats, loss {loss:.3f}')\n"
        "print('declines:', result['declines'], ' spearman(step, entropy):', result['spearman'])"
    ),
    new_code_cell(
        "probes.plot_knowledge_entropy(result['steps'], result['knowledge_entropy'], result['per_layer'])"
    ),
]


def write(cells, name):
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    write(PROBES, "probes.ipynb")
    write(KNOWLEDGE, "knowledge_entropy.ipynb")
    print("wrote probes.ipynb and knowledge_entropy.ipynb")
