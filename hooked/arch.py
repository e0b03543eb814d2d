"""One description per model family: where each role lives in a Hugging Face model.

An :class:`ArchSpec` names the module of every role a site or an intervention needs
(token and position embeddings, the layer list, each block's norms, attention and its
q/k/v/o projections, the MLP and its in/gate/out projections, the MoE router, the final
norm, the unembedding), the block topology (sequential, parallel attention + MLP,
post-norm only) and the scalars HF applies outside any module (Granite's residual
multiplier). It is the single source for:

* site resolution on both backends (:mod:`hooked.sites`, :mod:`hooked.backends`),
* per-site shapes and writability (:meth:`hooked.HookedModel.site_shape`, ``writable``),
* the residual writers used by weight orthogonalisation and the FFN input rows used by
  knowledge-entropy resuscitation (:meth:`ArchSpec.residual_writers`, :meth:`ArchSpec.ffn_inputs`).

Descriptions are derived from TransformerLens 4's architecture adapters (their
``component_mapping`` holds the HF module path of every component), so every family TL
supports is described without a hand-written table; :data:`HAND_WRITTEN` adds families TL
lacks. Each description is checked the first time a model of its family is wrapped
(:func:`hooked.verify.verify`): one short forward, every site compared with ``output_hidden_states``
and with the identities that tie sites together.

To add a family TL does not know, add an entry to :data:`HAND_WRITTEN` (module paths
relative to the ``*ForCausalLM`` root, as in the examples there) and a tiny config to
:func:`hooked.loading.tiny_config`; the parity tests then cover it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

# Family -> how the fused QKV projection output is laid out (q, k, v recovered by slicing).
#   "concat":   [q (H*dh) | k (Hkv*dh) | v (Hkv*dh)]      (GPT-2, GPT-BigCode, Phi-3)
#   "per_head": view [.., H, 3*dh] then chunk in three    (GPT-NeoX / Pythia)
#   "falcon":   Falcon's _split_heads (multi-query, or [H, 3, dh])
QKV_LAYOUTS = ("concat", "per_head", "falcon")


@dataclass(frozen=True)
class ArchSpec:
    """Where the roles of one model family live (module paths relative to the HF root).

    Block-relative paths (``ln1`` ... ``mlp``) are relative to one layer; ``q``/``k``/``v``/
    ``o``/``qkv`` relative to ``attn``; ``mlp_in``/``mlp_gate``/``mlp_out``/``router``
    relative to ``mlp``. ``None`` means the family has no such module.
    """

    model_type: str
    source: str
    embed: str
    layers: str
    attn: str
    o: str
    mlp: str
    final_norm: str
    unembed: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int | None
    vocab_size: int
    pos_embed: str | None = None
    ln1: str | None = None
    ln2: str | None = None
    ln1_post: str | None = None
    ln2_post: str | None = None
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None
    qkv_layout: str | None = None
    mlp_in: str | None = None
    mlp_gate: str | None = None
    mlp_out: str | None = None
    router: str | None = None
    n_experts: int | None = None
    parallel: bool = False
    residual_multiplier: float | None = None
    falcon_multi_query: bool = False

    # ------------------------------------------------------------------ topology
    @property
    def moe(self) -> bool:
        return self.router is not None

    @property
    def post_norm_only(self) -> bool:
        """OLMo 2 style: no pre-norms, a norm on each sublayer's output before the add."""
        return self.ln1 is None and self.ln1_post is not None

    @property
    def topology(self) -> str:
        if self.parallel:
            return "parallel"
        if self.post_norm_only:
            return "post_norm_only"
        if self.ln1_post is not None:
            return "sandwich"
        return "sequential"

    def layer_path(self, layer: int, rel: str | None = None) -> str:
        base = f"{self.layers}.{layer}"
        return base if rel is None else f"{base}.{rel}"

    def attn_path(self, layer: int, rel: str | None = None) -> str:
        base = self.layer_path(layer, self.attn)
        return base if rel is None else f"{base}.{rel}"

    def mlp_path(self, layer: int, rel: str | None = None) -> str:
        base = self.layer_path(layer, self.mlp)
        return base if rel is None else f"{base}.{rel}"

    # ------------------------------------------------------------------ sites
    def missing_site_reason(self, kind: str) -> str | None:
        """Why this family has no ``kind`` site, or ``None`` if it has it."""
        if kind == "resid_mid" and self.parallel:
            return (f"{self.model_type} blocks run attention and the MLP in parallel on the same input "
                    "(resid_post = resid_pre + attn_out + mlp_out), so there is no residual state between them; "
                    "use resid_pre, attn_out, mlp_out or resid_post")
        if kind == "mlp.hidden" and self.moe:
            return (f"{self.model_type} layers are mixtures of experts: each token's FFN hidden state lives in "
                    "the experts it was routed to, so there is no single per-slot memory vector; read "
                    "'mlp.router.L' (router logits) or 'mlp_out.L'")
        if kind == "mlp.hidden" and self.mlp_out is None:
            return f"the {self.model_type} MLP has no output projection described"
        if kind == "mlp.router" and not self.moe:
            return f"{self.model_type} has dense MLPs, no router (mlp.router exists on mixture-of-experts models)"
        if kind in ("attn.q", "attn.k", "attn.v") and self.qkv is not None and self.qkv_layout is None:
            return f"the layout of {self.model_type}'s fused QKV projection is not described"
        return None

    def site_shape(self, kind: str) -> tuple[int, ...]:
        """Per-token shape of a site of this kind (patterns excluded)."""
        if kind == "mlp.hidden":
            return (self.d_mlp,)
        if kind in ("attn.head_out", "attn.q"):
            return (self.n_heads, self.d_head)
        if kind in ("attn.k", "attn.v"):
            return (self.n_kv_heads, self.d_head)
        if kind == "mlp.router":
            return (self.n_experts,)
        if kind == "logits":
            return (self.vocab_size,)
        return (self.d_model,)

    # ------------------------------------------------------------------ weights
    def residual_writers(self, model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, str]]:
        """``(parameter, layout)`` for every weight that writes into the residual stream.

        layout ``"rows"``: the parameter's rows (or the vector itself) are residual
        vectors (embeddings ``[V, d]``, Conv1D ``[in, d]`` weights, biases ``[d]``);
        ``"cols"``: its columns are (``nn.Linear`` ``[d, in]`` weights). Raises where a
        weight edit cannot remove a direction (a norm sits between the writer and the
        residual add, or the writers are experts).
        """
        if self.ln1_post is not None or self.ln2_post is not None:
            raise ValueError(
                f"Weight orthogonalisation is not equivalent on {self.model_type}: its post-attention and "
                "post-feedforward norms rescale each channel after the output projections, so projecting those "
                "weights does not remove the direction. Use interventions.ablate_direction(model, r) (hooks), "
                "which is exact on every architecture."
            )
        if self.moe:
            raise ValueError(
                f"Weight orthogonalisation of {self.model_type} would have to edit every expert's down projection "
                "(fused expert tensors); use interventions.ablate_direction(model, r) (hooks) instead."
            )
        out = []
        for path in filter(None, (self.embed, self.pos_embed)):
            out.append((get_module(model, path).weight, "rows"))
        for layer in range(self.n_layers):
            for path in (self.attn_path(layer, self.o), self.mlp_path(layer, self.mlp_out)):
                mod = get_module(model, path)
                out.append((mod.weight, _layout(mod)))
                if getattr(mod, "bias", None) is not None:
                    out.append((mod.bias, "rows"))
        return out

    def ffn_inputs(self, model: torch.nn.Module, layer: int) -> list[tuple[torch.nn.Parameter, int, int]]:
        """``[(param, axis, offset)]``: slice ``offset + i`` of ``param`` along ``axis`` scales FFN memory slot
        ``i`` of ``layer`` (Kim et al. 2024, arXiv 2410.01380, Algorithm 1).

        Gated MLPs: the rows of the up projection (act(gate)*up is linear in them); a fused
        ``gate_up_proj`` (Phi-3, GLM) holds [gate; up], so its up rows start at ``d_mlp``.
        Plain MLPs: the FFN input rows and their bias, as in the paper's Algorithm 1.
        """
        if self.moe:
            raise ValueError(f"{self.model_type} layers are mixtures of experts; FFN memory slots are per expert, "
                             "so resuscitation is not defined for them.")
        mod = get_module(model, self.mlp_path(layer, self.mlp_in))
        axis = 1 if _layout(mod) == "rows" else 0
        if self.mlp_gate == "gate_up":
            return [(mod.weight, axis, self.d_mlp)]
        out = [(mod.weight, axis, 0)]
        if self.mlp_gate is None and getattr(mod, "bias", None) is not None:
            out.append((mod.bias, 0, 0))
        return out


def _in_features(mod: torch.nn.Module) -> int:
    w = mod.weight
    return int(w.shape[0] if _layout(mod) == "rows" else w.shape[1])


def _layout(mod: torch.nn.Module) -> str:
    """``"rows"`` for GPT-2 style Conv1D (weight [in, out]), ``"cols"`` for nn.Linear."""
    return "rows" if type(mod).__name__ == "Conv1D" else "cols"


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    mod = root
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


def get_module_through_wrappers(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """Like :func:`get_module`, stepping into TransformerLens bridge wrappers where a name is missing."""
    mod = root
    for part in path.split("."):
        while True:
            try:
                mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
                break
            except (AttributeError, TypeError, IndexError):
                inner = getattr(mod, "_original_component", None)
                if inner is None:
                    raise
                mod = inner
    return mod


def has_module(root: torch.nn.Module, path: str) -> bool:
    try:
        get_module(root, path)
        return True
    except (AttributeError, IndexError, TypeError):
        return False


# --------------------------------------------------------------------------- derivation


def _tl_adapter(hf_model):
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf

    arch = (getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__])[0]
    if arch != type(hf_model).__name__:
        arch = type(hf_model).__name__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bc = build_bridge_config_from_hf(hf_model.config, arch, "policylens", hf_model.dtype)
        adapter = ArchitectureAdapterFactory.select_architecture_adapter(bc)
    return adapter, bc


def _qkv_layout(model_type: str) -> str | None:
    if model_type in ("gpt2", "gpt_bigcode", "phi3"):
        return "concat"
    if model_type == "gpt_neox":
        return "per_head"
    if model_type == "falcon":
        return "falcon"
    return None


def _cfg(config, *names, default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def describe(hf_model) -> ArchSpec:
    """The :class:`ArchSpec` of ``hf_model`` (a ``*ForCausalLM`` transformers model).

    Hand-written entries (:data:`HAND_WRITTEN`) win; otherwise the description is derived
    from the TransformerLens adapter of the model's class. Raises a ValueError that says
    what is missing when neither knows the family.
    """
    config = hf_model.config
    mt = getattr(config, "model_type", None)
    if mt in HAND_WRITTEN:
        return HAND_WRITTEN[mt](hf_model)
    try:
        adapter, bc = _tl_adapter(hf_model)
    except Exception as e:  # TL raises ValueError("Unsupported architecture ...") and others
        raise ValueError(
            f"Architecture {mt!r} ({type(hf_model).__name__}) has no description: TransformerLens has no adapter "
            f"for it ({type(e).__name__}: {str(e).splitlines()[0][:160]}) and policylens has no hand-written one. "
            f"Add one to hooked.arch.HAND_WRITTEN (module paths of embed, layers, attention q/k/v/o, MLP in/gate/out, "
            f"norms, final norm, unembedding; see the README section 'Adding a model family'). "
            f"Described families: {', '.join(described_families())}."
        ) from None
    cm = adapter.component_mapping
    blocks = cm.get("blocks")
    if blocks is None or not hasattr(blocks, "submodules"):
        raise ValueError(f"Architecture {mt!r}: the TransformerLens adapter has no block list; cannot describe it.")
    subs = blocks.submodules
    unsupported = [k for k in subs if k not in ("ln1", "ln2", "ln1_post", "ln2_post", "attn", "mlp")]
    if unsupported:
        raise ValueError(
            f"Architecture {mt!r} has block components policylens does not describe ({unsupported}: e.g. linear "
            "attention or state-space mixers); its sites would be ambiguous. Add a hand-written description."
        )
    attn, mlp = subs["attn"], subs["mlp"]
    a_sub = {k: v.name for k, v in attn.submodules.items()}
    m_sub = {k: v.name for k, v in mlp.submodules.items()}
    name = lambda key: subs[key].name if key in subs else None  # noqa: E731
    moe = type(mlp).__name__ == "MoEBridge"
    gate_up = type(mlp).__name__ == "JointGateUpMLPBridge"
    qkv = a_sub.get("qkv")
    n_heads = int(bc.n_heads)
    d_head = int(bc.d_head)
    n_kv = int(getattr(bc, "n_key_value_heads", None) or n_heads)
    if mt == "falcon" and getattr(config, "multi_query", False) and not getattr(config, "new_decoder_architecture", False):
        n_kv = 1
    router = m_sub.get("gate") if moe else None
    n_experts = _cfg(config, "num_local_experts", "num_experts", "n_routed_experts") if moe else None
    parallel = bool(getattr(bc, "parallel_attn_mlp", False))
    if not parallel and "ln2" not in subs and "ln2_post" not in subs:
        parallel = True  # one norm feeding both sublayers (GPT-J, Phi, Cohere, Falcon)
    if mt in ("gpt_neox", "stablelm"):
        parallel = bool(getattr(config, "use_parallel_residual", parallel))
    spec = ArchSpec(
        model_type=mt,
        source=f"transformer_lens:{type(adapter).__name__}",
        embed=cm["embed"].name,
        pos_embed=cm["pos_embed"].name if "pos_embed" in cm else None,
        layers=blocks.name,
        attn=attn.name,
        o=a_sub["o"],
        q=None if qkv else a_sub.get("q"),
        k=None if qkv else a_sub.get("k"),
        v=None if qkv else a_sub.get("v"),
        qkv=qkv,
        qkv_layout=_qkv_layout(mt) if qkv else None,
        mlp=mlp.name,
        mlp_in=("gate_up_proj" if gate_up else m_sub.get("in")),
        mlp_gate=("gate_up" if gate_up else m_sub.get("gate")) if not moe else None,
        mlp_out=m_sub.get("out"),
        router=router,
        n_experts=n_experts,
        ln1=name("ln1"),
        ln2=name("ln2"),
        ln1_post=name("ln1_post"),
        ln2_post=name("ln2_post"),
        final_norm=cm["ln_final"].name,
        unembed=cm["unembed"].name,
        n_layers=int(bc.n_layers),
        d_model=int(bc.d_model),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_head=d_head,
        d_mlp=None if moe else _in_features(get_module(hf_model, f"{blocks.name}.0.{mlp.name}.{m_sub.get('out')}")),
        vocab_size=int(hf_model.get_output_embeddings().weight.shape[0]),
        parallel=parallel,
        residual_multiplier=_cfg(config, "residual_multiplier") if mt.startswith("granite") else None,
        falcon_multi_query=bool(mt == "falcon" and getattr(config, "multi_query", False)),
    )
    if gate_up and not has_module(hf_model, spec.mlp_path(0, "gate_up_proj")):
        raise ValueError(f"Architecture {mt!r}: expected a fused gate_up_proj in {spec.mlp_path(0)}; not found.")
    missing = [p for p in _paths(spec) if not has_module(hf_model, p)]
    if missing:
        raise ValueError(
            f"The {mt} description derived from TransformerLens ({spec.source}) names modules this model does not "
            f"have: {missing}. Add a hand-written description to hooked.arch.HAND_WRITTEN."
        )
    return spec


def _paths(spec: ArchSpec) -> list[str]:
    out = [spec.embed, spec.final_norm, spec.unembed, spec.attn_path(0, spec.o), spec.mlp_path(0)]
    out += [spec.layer_path(0, p) for p in (spec.ln1, spec.ln2, spec.ln1_post, spec.ln2_post) if p]
    out += [spec.attn_path(0, p) for p in (spec.q, spec.k, spec.v, spec.qkv) if p]
    out += [spec.mlp_path(0, p) for p in (spec.mlp_in, spec.mlp_out, spec.router) if p]
    if spec.pos_embed:
        out.append(spec.pos_embed)
    return out


def _llama_layout(hf_model, router: str | None = None, mlp: str = "mlp") -> ArchSpec:
    """A hand-written description for families laid out like Llama (``model.layers.L.self_attn.q_proj``
    ... ``mlp.gate_proj/up_proj/down_proj``, ``input_layernorm`` / ``post_attention_layernorm``,
    ``model.norm``, ``lm_head``); ``router`` names the MoE router inside ``mlp``."""
    cfg = hf_model.config
    n_heads = cfg.num_attention_heads
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    spec = ArchSpec(
        model_type=cfg.model_type, source="policylens:hand-written (Llama layout)", embed="model.embed_tokens",
        layers="model.layers", attn="self_attn", o="o_proj", q="q_proj", k="k_proj", v="v_proj", mlp=mlp,
        mlp_in=None if router else "up_proj", mlp_gate=None if router else "gate_proj",
        mlp_out=None if router else "down_proj", router=router,
        n_experts=_cfg(cfg, "num_local_experts", "num_experts") if router else None,
        ln1="input_layernorm", ln2="post_attention_layernorm", final_norm="model.norm", unembed="lm_head",
        n_layers=cfg.num_hidden_layers, d_model=cfg.hidden_size, n_heads=n_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", None) or n_heads, d_head=d_head,
        d_mlp=None if router else cfg.intermediate_size,
        vocab_size=int(hf_model.get_output_embeddings().weight.shape[0]),
    )
    missing = [p for p in _paths(spec) if not has_module(hf_model, p)]
    if missing:
        raise ValueError(f"The hand-written {cfg.model_type} description names modules this model lacks: {missing}.")
    return spec


# Families TransformerLens 4.3 has no adapter for, described by hand (its backend is then
# unavailable for them: use backend="nnsight").
HAND_WRITTEN: dict = {
    "helium": _llama_layout,
    "phimoe": lambda m: _llama_layout(m, router="router"),
}


def described_families() -> list[str]:
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES

    return sorted(set(SUPPORTED_ARCHITECTURES) | {f"{k} (hand-written)" for k in HAND_WRITTEN})


def finish_logits(config, logits: torch.Tensor) -> torch.Tensor:
    """What HF applies to the unembedding output before returning logits.

    Gemma 2/3 ``final_logit_softcapping`` (``c * tanh(z / c)``), Cohere's ``logit_scale``
    (``z * s``), Granite's ``logits_scaling`` (``z / s``); identity for other families.
    """
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    mt = getattr(config, "model_type", "")
    if mt.startswith("cohere") and getattr(config, "logit_scale", None) is not None:
        logits = logits * config.logit_scale
    if mt.startswith("granite") and getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    return logits


def families_table() -> str:
    """Markdown table of the families policylens is tested on (one tiny config per model type).

    Built from :data:`hooked.loading.TINY_ARCHS` and each family's :func:`describe` output
    (models instantiated on the meta device: no weights); the README's table is this output.
    """
    from transformers import AutoModelForCausalLM

    from .loading import TINY_ARCHS, tiny_config

    rows = ["| model type | description from | block | MoE | q/k/v from | post-norms |",
            "|---|---|---|---|---|---|"]
    for arch in TINY_ARCHS:
        cfg = tiny_config(arch, vocab_size=256)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        spec = describe(model)
        src = spec.source.split(":")[-1].replace("ArchitectureAdapter", "") + " (TL)" if spec.source.startswith(
            "transformer_lens") else spec.source
        qkv = f"fused `{spec.qkv}` ({spec.qkv_layout})" if spec.qkv else "separate projections"
        post = ", ".join(p for p in (spec.ln1_post, spec.ln2_post) if p) or "-"
        rows.append(f"| `{spec.model_type}` | {src} | {spec.topology} | {'yes' if spec.moe else '-'} | {qkv} | {post} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m hooked.arch  -> the README's family table
    print(families_table())
