"""Helpers shared by the intervention modules: site checks and token ids."""

from __future__ import annotations

import torch

from hooked import sites as _sites

# Sites a steering vector can write: one vector per token slot.
STEERABLE_KINDS = (
    "embed",
    "resid_pre",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.head_out",
    "attn_out",
    "resid_mid",
    "mlp.hidden",
    "mlp_out",
    "resid_post",
    "final_norm",
)


def check_writable_site(model, site: str) -> str:
    """Parse ``site`` for ``model`` and check it can carry a per-token vector write.

    Raises ValueError for an unknown site, a site that holds no per-token vector
    (``attn.pattern``, ``logits``), or one that this model's backend cannot write.
    """
    names = _sites.expand(model, site)
    if len(names) != 1:
        raise ValueError(f"Expected one concrete site, got pattern {site!r} matching {names}.")
    name = names[0]
    s = _sites.parse(name, model.n_layers)
    if s.kind not in STEERABLE_KINDS:
        raise ValueError(
            f"Site {name!r} holds no per-token vector that can be steered; steerable kinds are "
            f"{', '.join(STEERABLE_KINDS)}."
        )
    if not model.writable(name):
        raise ValueError(
            f"Site {name!r} cannot be written with the {model.backend} backend (a write there would not reach the "
            f"residual stream); use backend='tl', or steer a neighbouring writable site such as "
            f"'resid_post.{s.layer}' or 'attn_out.{s.layer}'."
        )
    return name


def token_ids(model, tokens, n: int, what: str) -> torch.Tensor:
    """Resolve answer tokens (one shared, or one per example; ints or single-token strings) to ``[n]`` ids."""
    if isinstance(tokens, (str, int)) and not isinstance(tokens, bool):
        tokens = [tokens] * n
    tokens = list(tokens)
    if len(tokens) != n:
        raise ValueError(f"{what}: got {len(tokens)} answer tokens for {n} prompts; pass one shared token or one per prompt.")
    out = []
    for t in tokens:
        if isinstance(t, int):
            if not 0 <= t < model.vocab_size:
                raise ValueError(f"{what}: token id {t} is outside the vocabulary (size {model.vocab_size}).")
            out.append(t)
            continue
        ids = model.tokenizer.encode(t, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"{what}: {t!r} tokenizes to {len(ids)} tokens {ids}; answer tokens must be single tokens "
                "(try a leading space, e.g. ' Yes', or pass the token id)."
            )
        out.append(ids[0])
    return torch.tensor(out, dtype=torch.long)


def last_logits(logits: torch.Tensor) -> torch.Tensor:
    """Logits at each row's last slot (the last real token: padding is on the left)."""
    return logits[:, -1, :]
