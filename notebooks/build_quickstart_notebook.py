"""Write notebooks/quickstart.ipynb (outputs stripped) with nbformat.

Run: python notebooks/build_quickstart_notebook.py
"""

from pathlib import Path

import nbformat as nbf
nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb.cells = [
    md("# policylens quickstart: load, capture, hook, generate\n\n"
       "Loads the packaged SmolLM2-135M-Instruct offline (dequantized once, cached as safetensors), captures "
       "activations by site name, and applies a hook during generation. Everything here is the public `hooked` API."),
    code("import torch\nimport hooked\n\nmodel = hooked.load_model(\"smollm2-135m-instruct\", backend=\"tl\")  # or backend=\"nnsight\"\nmodel"),
    md("## Sites\nOne vocabulary on every architecture; wildcards expand, and unknown names are errors that list the valid ones."),
    code("print(model.sites(\"resid_post.*\")[:3], '...')\ntry:\n    model.sites(\"resid_post.40\")\nexcept ValueError as e:\n    print(e)"),
    md("## Capture\nLeft-padded batches; `positions` counts real tokens only. The forward stops after the deepest site asked for."),
    code("prompts = [\"The capital of France is\", \"Berlin is the capital of\", \"Two plus two equals\"]\n"
         "acts = model.capture(prompts, [\"resid_post.*\", \"mlp.hidden.10\", \"attn.pattern.5\"], positions=\"last\")\n"
         "print({s: tuple(acts[s].shape) for s in [\"resid_post.0\", \"mlp.hidden.10\", \"attn.pattern.5\"]})\n"
         "norms = acts.stack(\"resid_post.*\").norm(dim=-1).mean(1)\n"
         "print(\"mean residual norm by layer:\", [round(float(x), 1) for x in norms[::5]])"),
    code("ragged = model.capture(prompts, \"resid_post.12\", positions=\"all\")\n"
         "print(ragged[\"resid_post.12\"].shape, ragged.index[:6].tolist())  # rows of (prompt, token)\n"
         "print(model.to_str_tokens(prompts[0]))"),
    md("## Hooks\n`fn(act, ctx)` returns a replacement or `None`. `ctx.positions` indexes real tokens (−1 = padding), "
       "`ctx.is_generated` marks generated tokens. Handles remove their hooks on exit, even after an exception."),
    code("print(model.generate([\"The capital of France is\"], max_new_tokens=6))\n"
         "def damp(act, ctx):\n    return act * 0.0 + act.mean(dim=(0, 1), keepdim=True)  # erase token information at layer 3\n"
         "with model.hooks({\"resid_post.3\": damp}):\n    print(model.generate([\"The capital of France is\"], max_new_tokens=6))\n"
         "print(\"hooks left:\", model.active_hooks)"),
    md("## Save and load\nArtifacts are safetensors + JSON; loading runs no code."),
    code("import tempfile, pathlib\nd = pathlib.Path(tempfile.mkdtemp()) / \"acts\"\nacts.save(d)\n"
         "back = hooked.ActivationSet.load(d)\nassert torch.equal(back[\"resid_post.7\"], acts[\"resid_post.7\"])\nsorted(p.name for p in d.iterdir())"),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, str(Path(__file__).resolve().parent / "quickstart.ipynb"))
