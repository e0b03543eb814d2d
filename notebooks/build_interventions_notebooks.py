"""Write notebooks/steering.ipynb and notebooks/patching.ipynb (outputs stripped) with nbformat.

Run: python notebooks/build_interventions_notebooks.py
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

STEERING = [
    new_markdown_cell(
        "# Steering vectors at inference\n\n"
        "Extract a sentiment vector from built-in contrastive pairs (CAA mean difference, Rimsky et al. 2024), "
        "attach it to the packaged SmolLM2-135M-Instruct while it generates, and measure the effect: a multiplier "
        "sweep of the logit difference ` good` - ` bad`, per-example steerability (Tan et al. 2024), the side-effect KL "
        "on neutral prompts, and the lexicon sentiment of the continuations. Runs on CPU in about a minute."
    ),
    new_code_cell(
        "import torch\n\nimport hooked\nimport interventions as iv\n\n"
        "model = hooked.load_model('smollm2-135m-instruct')\nmodel"
    ),
    new_markdown_cell(
        "## Extract\nEach pair differs only in its sentiment word; activations are read at each prompt's last real "
        "token (left padding never shifts the read position)."
    ),
    new_code_cell(
        "pairs = iv.data.sentiment_pairs()[:16]\nprint(pairs[0])\n"
        "vec = iv.extract(model, pairs, 'resid_post.12', method='mean_diff')\nvec"
    ),
    new_code_cell(
        "# safetensors + JSON; loading runs no code\nvec.save('sentiment_vec')\n"
        "vec = iv.SteeringVector.load('sentiment_vec')\nprint(vec.method, vec.read_position, vec.n_pairs, vec.version)"
    ),
    new_markdown_cell(
        "## Attach while generating\n`vec.apply(...)` returns a handle: a context manager, or keep it and call "
        "`.remove()`. With the KV cache on, every decode step is a one-token forward and is steered too."
    ),
    new_code_cell(
        "prompts = ['My thoughts on the new movie:', 'The meeting this morning was']\n"
        "for m in (-4.0, 0.0, 4.0):\n"
        "    with vec.apply(model, multiplier=m, positions='all'):\n"
        "        outs = model.generate(prompts, max_new_tokens=16)\n"
        "    for p, o in zip(prompts, outs):\n"
        "        print(f'{m:+.0f}  score={iv.data.sentiment_score(o):+.3f}  {p}{o!r}')"
    ),
    new_code_cell(
        "handle = vec.apply(model, multiplier=4.0, positions='generated')  # prompt pass untouched\n"
        "print(handle, model.active_hooks)\nprint(model.generate(prompts[:1], max_new_tokens=12))\n"
        "handle.remove()\nassert model.active_hooks == {}"
    ),
    new_markdown_cell("## Measure\nLogit difference ` good` - ` bad` at the last token, per example, at each multiplier."),
    new_code_cell(
        "sweep = iv.multiplier_sweep(model, vec, iv.data.NEUTRAL_PROMPTS[:4], ' good', ' bad', multipliers=[-4, -2, 0, 2, 4])\n"
        "print('mean logit diff:', [round(x, 2) for x in sweep.mean_metric.tolist()])\n"
        "print('steerability (mean slope):', round(sweep.steerability, 3), ' anti-steerable fraction:', sweep.anti_steerable_fraction)\n"
        "print('side-effect KL at m=4 (nats/token):', round(iv.side_effect_kl(model, vec, iv.data.NEUTRAL_PROMPTS[4:], 4.0), 4))"
    ),
    new_markdown_cell(
        "## Other operators\n`ablate` removes the component along the vector, `clamp` sets it; directional "
        "ablation at every layer (Arditi et al. 2024) is `iv.ablate_direction`."
    ),
    new_code_cell(
        "u = vec['resid_post.12'] / vec['resid_post.12'].norm()\n"
        "with vec.apply(model, multiplier=1.0, operator='ablate'):\n"
        "    acts = model.capture(prompts, 'resid_post.12', positions='all')['resid_post.12']\n"
        "print('max |x . u| after ablation:', float((acts @ u).abs().max()))\n"
        "with iv.ablate_direction(model, vec['resid_post.12']):\n"
        "    print(model.generate(prompts[:1], max_new_tokens=12))"
    ),
]

PATCHING = [
    new_markdown_cell(
        "# Activation patching\n\n"
        "Run a clean and a corrupted prompt, copy the clean activation at one site x position into the corrupted "
        "run, and measure the fraction of the logit difference recovered: "
        "`(M_patched - M_corrupted) / (M_clean - M_corrupted)`. First by hand with `model.hooks`, then with "
        "`iv.activation_patching` and its heatmap, then across two models of the same architecture."
    ),
    new_code_cell(
        "import matplotlib\nmatplotlib.use('Agg')\nimport torch\n\nimport hooked\nimport interventions as iv\n\n"
        "model = hooked.load_model('smollm2-135m-instruct')\n"
        "clean, corrupted = 'The Eiffel Tower is in the city of', 'The Colosseum is in the city of'\n"
        "paris, rome = model.tokenizer.encode(' Paris')[0], model.tokenizer.encode(' Rome')[0]\n"
        "print(model.to_str_tokens(clean), model.to_str_tokens(corrupted), sep='\\n')"
    ),
    new_markdown_cell("## By hand, in a script\nSave the clean activation with one hook, write it into the corrupted run with another."),
    new_code_cell(
        "def logit_diff(logits):\n    return float(logits[0, -1, paris] - logits[0, -1, rome])\n\n"
        "saved = {}\ndef save(act, ctx):\n    saved['act'] = act.clone()\n\n"
        "site, pos = 'resid_post.6', 3  # the last subject token (' Tower' / 'um')\n"
        "m_clean = logit_diff(model.run_with_hooks(clean, hooks={site: save}))\n"
        "m_corrupt = logit_diff(model.run_with_hooks(corrupted))\n\n"
        "def patch(act, ctx):\n    out = act.clone()\n    sel = ctx.positions == pos  # index among real tokens\n"
        "    out[sel] = saved['act'][sel]\n    return out\n\n"
        "m_patched = logit_diff(model.run_with_hooks(corrupted, hooks={site: patch}))\n"
        "print(f'clean {m_clean:.2f}  corrupted {m_corrupt:.2f}  patched {m_patched:.2f}  '\n"
        "      f'recovered {iv.fraction_recovered(m_patched, m_clean, m_corrupt):.2f}')"
    ),
    new_markdown_cell("## Every site x position\nEvery layer's residual stream, each position (the positions of one site run as one batched forward)."),
    new_code_cell(
        "res = iv.activation_patching(model, clean, corrupted, sites='resid_post.*',\n"
        "                             positions='each', answers=(' Paris', ' Rome'))\n"
        "print('clean', round(res.clean_metric, 2), 'corrupted', round(res.corrupted_metric, 2))\n"
        "fig = res.plot(title='Eiffel Tower -> Colosseum: fraction of logit diff recovered')\nfig"
    ),
    new_code_cell(
        "last = f'resid_post.{model.n_layers - 1}'\n"
        "full = iv.activation_patching(model, clean, corrupted, sites=last, positions='all', answers=(' Paris', ' Rome'))\n"
        "print('patching the whole last layer recovers', float(full.recovered[0, 0]))"
    ),
    new_markdown_cell(
        "## Across two models\nThe clean activations can come from another model with the same architecture "
        "(`source_model=`), e.g. a DPO-trained policy and its reference. Here two tiny random Llamas show the API."
    ),
    new_code_cell(
        "a, b = hooked.tiny_model('llama', seed=0), hooked.tiny_model('llama', seed=1)\n"
        "xa = a.tokenizer.encode(' Paris')[0]\n"
        "metric = lambda logits: float(logits[:, -1, xa].mean())\n"
        "cross = iv.activation_patching(b, clean, corrupted, sites='resid_post.*', positions='all', metric=metric, source_model=a)\n"
        "print(cross.sites, cross.recovered.squeeze(1).tolist())"
    ),
]


def build() -> None:
    for name, cells in (("steering", STEERING), ("patching", PATCHING)):
        nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    build()
