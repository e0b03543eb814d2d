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
``attn.pattern.L``  attention probabilities                [B, H, T_q, T_k]
``attn.head_out.L`` per-head outputs before o_proj         [B, T, H, d_head]
``attn_out.L``      what attention adds to the residual    [B, T, d_model]
``resid_mid.L``     residual after attention, before MLP   [B, T, d_model]
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
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

LAYER_KINDS = (
    "resid_pre",
    "attn.head_out",
    "attn.pattern",
    "attn_out",
    "resid_mid",
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


def expand(model_or_n_layers, spec, arch: str | None = None) -> list[str]:
    """Expand a site spec (a name, a wildcard pattern, or a list of them) to concrete names.

    Returned names are unique and in forward order. Patterns use shell wildcards
    (``resid_post.*``, ``*.3``); a pattern that matches nothing is an error.
    """
    n_layers = getattr(model_or_n_layers, "n_layers", model_or_n_layers)
    arch = arch or getattr(model_or_n_layers, "arch", None)
    if isinstance(spec, (str, Site)):
        spec = [spec]
    spec = list(spec)
    if not spec:
        raise ValueError("No sites requested; pass e.g. 'resid_post.*' or ['resid_post.3', 'logits'].")
    universe = all_sites(n_layers)
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
        table = ARCH_TABLES[arch]
        for s in out:
            if s.kind not in table.nnsight:
                raise ValueError(f"Site {s.name!r} does not exist on architecture {arch!r}.")
    uniq = sorted(set(out), key=lambda s: s.order_key(n_layers))
    return [s.name for s in uniq]


def all_sites(n_layers: int) -> list[Site]:
    sites = [Site("embed")]
    for layer in range(n_layers):
        sites.extend(Site(k, layer) for k in LAYER_KINDS)
    sites += [Site("final_norm"), Site("logits")]
    return sites


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class NNSightRef:
    """Where a site lives for the nnsight backend: a module path (``{L}`` = layer)
    and whether it is that module's ``input`` or ``output`` (``index`` picks a tuple
    element). ``writable`` is False where replacing the value would not reach the
    residual stream (e.g. a norm's input that HF also keeps as ``residual``)."""

    path: str
    io: str
    index: int | None = None
    writable: bool = True
    heads: bool = False  # reshape [B,T,H*dh] <-> [B,T,H,dh]


@dataclass(frozen=True)
class ArchTable:
    arch: str
    layers_path: str
    tl: dict[str, str]
    nnsight: dict[str, NNSightRef]


# The TransformerLens 4 bridge uses one hook vocabulary on every architecture.
_TL = {
    "embed": "embed.hook_out",
    "resid_pre": "blocks.{L}.hook_resid_pre",
    "attn.pattern": "blocks.{L}.attn.hook_pattern",
    "attn.head_out": "blocks.{L}.attn.hook_z",
    "attn_out": "blocks.{L}.hook_attn_out",
    "resid_mid": "blocks.{L}.hook_resid_mid",
    "mlp.hidden": "blocks.{L}.mlp.out.hook_in",
    "mlp_out": "blocks.{L}.hook_mlp_out",
    "resid_post": "blocks.{L}.hook_resid_post",
    "final_norm": "ln_final.hook_out",
    "logits": "unembed.hook_out",
}


def _llama_like(arch: str, post_norms: bool = False) -> ArchTable:
    lay = "model.layers.{L}"
    nn = {
        "embed": NNSightRef("model.embed_tokens", "output"),
        "resid_pre": NNSightRef(lay, "input"),
        "attn.pattern": NNSightRef(lay + ".self_attn", "output", index=1, writable=False),
        "attn.head_out": NNSightRef(lay + ".self_attn.o_proj", "input", heads=True),
        "attn_out": (
            NNSightRef(lay + ".post_attention_layernorm", "output")
            if post_norms
            else NNSightRef(lay + ".self_attn", "output", index=0)
        ),
        "resid_mid": NNSightRef(
            lay + (".pre_feedforward_layernorm" if post_norms else ".post_attention_layernorm"),
            "input",
            writable=False,
        ),
        "mlp.hidden": NNSightRef(lay + ".mlp.down_proj", "input"),
        "mlp_out": (
            NNSightRef(lay + ".post_feedforward_layernorm", "output") if post_norms else NNSightRef(lay + ".mlp", "output")
        ),
        "resid_post": NNSightRef(lay, "output"),
        "final_norm": NNSightRef("model.norm", "output"),
        "logits": NNSightRef("lm_head", "output"),
    }
    return ArchTable(arch, "model.layers", dict(_TL), nn)


def _gpt2() -> ArchTable:
    lay = "transformer.h.{L}"
    nn = {
        "embed": NNSightRef("transformer.wte", "output"),
        "resid_pre": NNSightRef(lay, "input"),
        "attn.pattern": NNSightRef(lay + ".attn", "output", index=1, writable=False),
        "attn.head_out": NNSightRef(lay + ".attn.c_proj", "input", heads=True),
        "attn_out": NNSightRef(lay + ".attn", "output", index=0),
        "resid_mid": NNSightRef(lay + ".ln_2", "input", writable=False),
        "mlp.hidden": NNSightRef(lay + ".mlp.c_proj", "input"),
        "mlp_out": NNSightRef(lay + ".mlp", "output"),
        "resid_post": NNSightRef(lay, "output"),
        "final_norm": NNSightRef("transformer.ln_f", "output"),
        "logits": NNSightRef("lm_head", "output"),
    }
    return ArchTable("gpt2", "transformer.h", dict(_TL), nn)


ARCH_TABLES: dict[str, ArchTable] = {
    "llama": _llama_like("llama"),
    "qwen2": _llama_like("qwen2"),
    "gemma3": _llama_like("gemma3", post_norms=True),
    "gpt2": _gpt2(),
}

# HF ``config.model_type`` -> table name
MODEL_TYPES = {
    "llama": "llama",
    "qwen2": "qwen2",
    "gemma3_text": "gemma3",
    "gemma3": "gemma3",
    "gpt2": "gpt2",
}


def arch_of(config) -> str:
    mt = getattr(config, "model_type", None)
    if mt not in MODEL_TYPES:
        raise ValueError(
            f"Architecture {mt!r} has no site table yet; supported model types: {sorted(MODEL_TYPES)}. "
            "Add an ArchTable to hooked.sites.ARCH_TABLES to support it."
        )
    return MODEL_TYPES[mt]


def tl_hook_name(arch: str, site: Site) -> str:
    return ARCH_TABLES[arch].tl[site.kind].format(L=site.layer)


def nnsight_ref(arch: str, site: Site) -> NNSightRef:
    ref = ARCH_TABLES[arch].nnsight[site.kind]
    return NNSightRef(ref.path.format(L=site.layer), ref.io, ref.index, ref.writable, ref.heads)
