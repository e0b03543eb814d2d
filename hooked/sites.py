"""One site vocabulary for every architecture.

A *site* is a name such as ``resid_post.12``, ``mlp.hidden.3`` or ``attn.pattern.0``.
The names are the same on every architecture; one table per architecture
(:data:`ARCH_TABLES`) maps each site to a TransformerLens bridge hook point and
to a module path + ``input``/``output`` for the nnsight backend.

==================  =====================================  ==========================
site                meaning                                shape
==================  =====================================  ==========================
``embed``           token embedding as fed to block 0      [B, T, d_model]
                    (Gemma's sqrt(d) scale included; GPT-2
                    position embedding *not* included)
``resid_pre.L``     residual stream entering block L       [B, T, d_model]
``attn.q.L``        query projection, per head, before     [B, T, H, d_head]
                    rotary and q-norm (TL's ``hook_q``)
``attn.k.L``        key projection, per KV head (GQA:      [B, T, H_kv, d_head]
                    before the heads are repeated)
``attn.v.L``        value projection, per KV head          [B, T, H_kv, d_head]
``attn.head_out.L`` per-head outputs before o_proj         [B, T, H, d_head]
``attn.pattern.L``  attention probabilities                [B, H, T_q, T_k]
``attn_out.L``      what attention adds to the residual    [B, T, d_model]
``resid_mid.L``     residual after attention, before MLP   [B, T, d_model]
``mlp.router.L``    router logits of a mixture-of-experts  [B, T, n_experts]
                    layer (read-only: routing is decided
                    inside the router)
``mlp.hidden.L``    input of the FFN down projection       [B, T, d_mlp]
                    (act(gate)*up for gated MLPs): the
                    per-slot memory coefficients
``mlp_out.L``       what the MLP adds to the residual      [B, T, d_model]
``resid_post.L``    residual stream leaving block L        [B, T, d_model]
``final_norm``      output of the final norm               [B, T, d_model]
``logits``          output logits                          [B, T, vocab]
==================  =====================================  ==========================

``resid_post.L`` equals HF ``hidden_states[L + 1]`` for ``L < n_layers - 1``; HF's last
hidden state is already normed and equals ``final_norm``.

Not every family has every kind (the model's :class:`~hooked.arch.ArchSpec` decides, and
asking for a missing one is an error that says why): parallel blocks (GPT-J, GPT-NeoX,
Falcon, Phi, Cohere) have no ``resid_mid``; mixture-of-experts layers have ``mlp.router``
and no ``mlp.hidden``. In post-norm blocks (Gemma 2/3, OLMo 2) ``attn_out``/``mlp_out``
are what is added to the residual, i.e. after the post-norm; with Granite's residual
multiplier they include it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

# In forward order (the nnsight backend must touch modules in the order they run).
LAYER_KINDS = (
    "resid_pre",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.head_out",
    "attn.pattern",
    "attn_out",
    "resid_mid",
    "mlp.router",
    "mlp.hidden",
    "mlp_out",
    "resid_post",
)
GLOBAL_KINDS = ("embed", "final_norm", "logits")
ALL_KINDS = GLOBAL_KINDS[:1] + LAYER_KINDS + GLOBAL_KINDS[1:]

_SITE_RE = re.compile(r"^(?P<kind>[a-z_.]+?)(?:\.(?P<layer>\d+|\*))?$")


@dataclass(frozen=True, order=True)
class Site:
    """A parsed site: ``kind`` plus ``layer`` (``None`` for global sites)."""

    kind: str
    layer: int | None = None

    @property
    def name(self) -> str:
        return self.kind if self.layer is None else f"{self.kind}.{self.layer}"

    def order_key(self, n_layers: int) -> tuple[int, int]:
        """Position of this site in the forward pass (smaller runs earlier)."""
        if self.kind == "embed":
            return (-1, 0)
        if self.kind == "final_norm":
            return (n_layers, 0)
        if self.kind == "logits":
            return (n_layers, 1)
        return (int(self.layer), LAYER_KINDS.index(self.kind))

    def __str__(self) -> str:
        return self.name


def _valid_names_hint(n_layers: int) -> str:
    last = n_layers - 1
    layer = ", ".join(f"{k}.0-{last}" for k in LAYER_KINDS)
    return f"valid sites: embed, {layer}, final_norm, logits (wildcards like 'resid_post.*')"


def parse(name: str, n_layers: int | None = None) -> Site:
    """Parse one concrete site name; checks the layer range when ``n_layers`` is given."""
    if not isinstance(name, str):
        raise TypeError(f"A site must be a string like 'resid_post.3'; got {type(name).__name__} {name!r}.")
    m = _SITE_RE.match(name.strip())
    kind = m.group("kind") if m else None
    layer = m.group("layer") if m else None
    if kind in GLOBAL_KINDS and layer is None:
        return Site(kind)
    if kind in LAYER_KINDS and layer is not None and layer != "*":
        lay = int(layer)
        if n_layers is not None and not 0 <= lay < n_layers:
            raise ValueError(
                f"Site {name!r} is out of range: this model has {n_layers} layers (0-{n_layers - 1})."
            )
        return Site(kind, lay)
    if kind in LAYER_KINDS and layer is None:
        raise ValueError(f"Site {name!r} needs a layer: use '{kind}.L' (e.g. '{kind}.0') or '{kind}.*'.")
    hint = _valid_names_hint(n_layers) if n_layers else "valid kinds: " + ", ".join(ALL_KINDS)
    raise ValueError(f"Unknown site {name!r}; {hint}.")


def expand(model_or_n_layers, spec) -> list[str]:
    """Expand a site spec (a name, a wildcard pattern, or a list of them) to concrete names.

    Returned names are unique and in forward order. Patterns use shell wildcards
    (``resid_post.*``, ``*.3``); a pattern that matches nothing is an error. Given a
    model, kinds its architecture lacks are left out of wildcard matches and are an
    error (saying why) when named.
    """
    n_layers = getattr(model_or_n_layers, "n_layers", model_or_n_layers)
    arch = getattr(model_or_n_layers, "spec", None)
    if isinstance(spec, (str, Site)):
        spec = [spec]
    spec = list(spec)
    if not spec:
        raise ValueError("No sites requested; pass e.g. 'resid_post.*' or ['resid_post.3', 'logits'].")
    universe = all_sites(n_layers)
    if arch is not None:
        universe = [s for s in universe if arch.missing_site_reason(s.kind) is None]
    out: list[Site] = []
    for item in spec:
        item = item.name if isinstance(item, Site) else item
        if isinstance(item, str) and any(c in item for c in "*?["):
            hits = [s for s in universe if fnmatch.fnmatchcase(s.name, item)]
            if not hits:
                raise ValueError(f"Site pattern {item!r} matches nothing; {_valid_names_hint(n_layers)}.")
            out.extend(hits)
        else:
            out.append(parse(item, n_layers))
    if arch is not None:
        for s in out:
            why = arch.missing_site_reason(s.kind)
            if why:
                raise ValueError(f"Site {s.name!r} does not exist on this {arch.model_type} model: {why}.")
    uniq = sorted(set(out), key=lambda s: s.order_key(n_layers))
    return [s.name for s in uniq]


def all_sites(n_layers: int) -> list[Site]:
    sites = [Site("embed")]
    for layer in range(n_layers):
        sites.extend(Site(k, layer) for k in LAYER_KINDS)
    sites += [Site("final_norm"), Site("logits")]
    return sites
