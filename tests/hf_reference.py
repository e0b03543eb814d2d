"""Plain-transformers reference activations (output_hidden_states + plain forward hooks)."""

import torch


def _layers(model):
    return model.transformer.h if hasattr(model, "transformer") else model.model.layers


def reference_sites(model, input_ids, attention_mask, layer):
    """Every canonical site at ``layer`` (and the global ones) from a plain HF forward."""
    arch = model.config.model_type
    gpt2 = arch == "gpt2"
    lay = _layers(model)[layer]
    caps = {}
    hooks = []

    def out(name, index=None):
        def f(mod, args, output):
            caps[name] = output[index] if index is not None else output

        return f

    def inp(name):
        def f(mod, args):
            caps[name] = args[0]

        return f

    attn = lay.attn if gpt2 else lay.self_attn
    o_proj = attn.c_proj if gpt2 else attn.o_proj
    down = lay.mlp.c_proj if gpt2 else lay.mlp.down_proj
    embed = model.transformer.wte if gpt2 else model.model.embed_tokens
    hooks.append(embed.register_forward_hook(out("embed")))
    hooks.append(o_proj.register_forward_pre_hook(inp("head_out")))
    hooks.append(down.register_forward_pre_hook(inp("mlp.hidden")))
    hooks.append(lay.register_forward_hook(out("resid_post", None)))
    if arch.startswith("gemma3"):
        hooks.append(lay.post_attention_layernorm.register_forward_hook(out("attn_out")))
        hooks.append(lay.post_feedforward_layernorm.register_forward_hook(out("mlp_out")))
    else:
        hooks.append(attn.register_forward_hook(out("attn_out", 0)))
        hooks.append(lay.mlp.register_forward_hook(out("mlp_out")))
    pos = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
    old_attn = model.config._attn_implementation
    model.config._attn_implementation = "eager"  # only eager attention returns the pattern
    try:
        with torch.no_grad():
            o = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                      output_hidden_states=True, output_attentions=True, use_cache=False)
    finally:
        model.config._attn_implementation = old_attn
        for h in hooks:
            h.remove()
    rp = caps["resid_post"]
    rp = rp[0] if isinstance(rp, tuple) else rp
    ho = caps["head_out"]
    n_heads = model.config.num_attention_heads
    return {
        "embed": caps["embed"],
        f"resid_pre.{layer}": o.hidden_states[layer],
        f"attn.head_out.{layer}": ho.reshape(*ho.shape[:-1], n_heads, -1),
        f"attn.pattern.{layer}": o.attentions[layer],
        f"attn_out.{layer}": caps["attn_out"],
        f"resid_mid.{layer}": o.hidden_states[layer] + caps["attn_out"],
        f"mlp.hidden.{layer}": caps["mlp.hidden"],
        f"mlp_out.{layer}": caps["mlp_out"],
        f"resid_post.{layer}": rp,
        "final_norm": o.hidden_states[-1],
        "logits": o.logits,
    }
