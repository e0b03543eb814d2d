"""The two hook backends: the TransformerLens 4 bridge and nnsight.

Both expose one operation, :meth:`run`: a forward in which, at each planned site (in
forward order), the registered hook functions may replace the activation, the value is
saved if asked, and the pass stops right after the deepest site when no output is
needed. Hooks exist only for the duration of a run, so none is ever left on a model,
whatever happens inside. Where each site lives comes from the model's
:class:`~hooked.arch.ArchSpec` (one description per family, shared by both backends).

Each backend runs its own *structural copy* of the caller's model: the module tree is
copied, parameters and buffers are shared (no memory is duplicated), so the caller's
model keeps its module classes, state-dict keys, config and attention implementation.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from . import sites as S
from .arch import ArchSpec, get_module, get_module_through_wrappers


class _StopForward(Exception):
    """Raised inside a hook to end the forward after the deepest requested site."""


@dataclass
class PlanItem:
    site: S.Site
    fns: list
    save: bool


def structural_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model``'s module tree and config that shares every parameter and buffer.

    Accelerate dispatch hooks (offloaded or multi-device models) are shared as well, so the
    copy loads offloaded weights the same way the original does.
    """
    memo = {}
    for t in list(model.parameters()) + list(model.buffers()):
        memo[id(t)] = t
    for mod in model.modules():
        hook = getattr(mod, "_hf_hook", None)
        if hook is not None:
            memo[id(hook)] = hook
    return copy.deepcopy(model, memo)


@contextlib.contextmanager
def attn_implementation(model: torch.nn.Module, impl: str | None):
    """Run ``model`` with attention implementation ``impl`` (``None``: leave it)."""
    cfg = model.config
    old = getattr(cfg, "_attn_implementation", None)
    if impl is None or impl == old:
        yield
        return
    cfg._attn_implementation = impl
    try:
        yield
    finally:
        cfg._attn_implementation = old


def apply_hook_fns(value: torch.Tensor, item: PlanItem, make_ctx: Callable, writable: bool = True,
               why_read_only: str = "") -> torch.Tensor:
    if not item.fns:
        return value
    ctx = make_ctx(item.site)
    for fn in item.fns:
        new = fn(value, ctx)
        if new is None:
            continue
        if not writable:
            raise ValueError(f"Site {item.site.name!r} cannot be written {why_read_only}; observe it (return None)"
                             " or write a neighbouring site such as 'attn_out'/'resid_post'.")
        if not isinstance(new, torch.Tensor):
            raise TypeError(
                f"Hook {getattr(fn, '__name__', fn)!r} at site {item.site.name!r} returned "
                f"{type(new).__name__}; return a tensor of shape {tuple(value.shape)} or None."
            )
        if new.shape != value.shape:
            raise ValueError(
                f"Hook {getattr(fn, '__name__', fn)!r} at site {item.site.name!r} returned shape "
                f"{tuple(new.shape)}; the activation there has shape {tuple(value.shape)}."
            )
        value = new.to(device=value.device, dtype=value.dtype)
    return value


_ROUTER_READ_ONLY = "(router logits: the routing is decided inside the router module, so a replaced value would not " \
                    "change which experts run)"

# --------------------------------------------------------------------------- TransformerLens


_TL_HOOKS = {
    "resid_pre": "blocks.{L}.hook_resid_pre",
    "attn.q": "blocks.{L}.attn.hook_q",
    "attn.k": "blocks.{L}.attn.hook_k",
    "attn.v": "blocks.{L}.attn.hook_v",
    "attn.head_out": "blocks.{L}.attn.hook_z",
    "attn.pattern": "blocks.{L}.attn.hook_pattern",
    "attn_out": "blocks.{L}.hook_attn_out",
    "resid_mid": "blocks.{L}.hook_resid_mid",
    # router logits are computed from the router's input: TL's gate.hook_out is not the logits on
    # every family (GraniteMoE's fires on the expert indices)
    "mlp.router": "blocks.{L}.mlp.gate.hook_in",
    "mlp.hidden": "blocks.{L}.mlp.out.hook_in",
    "mlp_out": "blocks.{L}.hook_mlp_out",
    "resid_post": "blocks.{L}.hook_resid_post",
    "final_norm": "ln_final.hook_out",
}


def tl_hook_name(spec: ArchSpec, site: S.Site) -> str:
    """The TransformerLens bridge hook point of ``site``."""
    if site.kind == "embed":
        # the token embedding fed to block 0; with absolute positions, the token part only
        return "embed.hook_out" if spec.pos_embed else "blocks.0.hook_resid_pre"
    return _TL_HOOKS[site.kind].format(L=site.layer)


# Sites computed inside attention: only TransformerLens' own attention exposes them
ATTENTION_INTERNAL_KINDS = frozenset({"attn.q", "attn.k", "attn.v", "attn.head_out", "attn.pattern"})


class TLBackend:
    """Hooks through the TransformerLens 4 ``TransformerBridge`` hook points.

    The bridge swaps modules for bridge components in place, so it is built on a
    :func:`structural_copy` of the model; calling that copy fires the bridge's hook points
    with numbers equal to plain ``transformers`` (checked by the parity tests).

    The bridge re-implements attention step by step (eager) to expose ``hook_q`` ...
    ``hook_pattern``. A forward that needs none of those sites runs each layer's own HF
    attention module instead (the model's attention implementation, SDPA by default), so
    residual-stream work runs at plain-model speed; the other hook points fire as usual.
    """

    name = "tl"

    def __init__(self, hf_model, tokenizer, spec: ArchSpec, bridge=None):
        if bridge is None:
            from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

            if not spec.source.startswith("transformer_lens"):
                raise ValueError(
                    f"TransformerLens has no adapter for {spec.model_type!r} (policylens describes it by hand), so the "
                    "TL backend cannot hook it; load it with backend='nnsight'."
                )

            runtime = structural_copy(hf_model)
            runtime.eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bridge = build_bridge_from_module(runtime, type(hf_model).__name__, hf_config=runtime.config,
                                                  tokenizer=copy.deepcopy(tokenizer), dtype=hf_model.dtype,
                                                  model_name=getattr(hf_model.config, "_name_or_path", "") or "model")
        self.bridge = bridge
        self.runtime_model = bridge.original_model
        self.plain_model = hf_model
        self.spec = spec
        self._attn_bridges = None

    def _attention_bridges(self) -> list:
        if self._attn_bridges is None:
            out = []
            for layer in range(self.spec.n_layers):
                mod = get_module_through_wrappers(self.runtime_model, self.spec.attn_path(layer))
                if type(mod).__name__.endswith("Bridge") and getattr(mod, "original_component", None) is not None:
                    out.append(mod)
            self._attn_bridges = out
        return self._attn_bridges

    @contextlib.contextmanager
    def _native_attention(self):
        """Each attention bridge runs its HF module's own forward (no attention-internal hooks)."""
        bridges = self._attention_bridges()
        try:
            for mod in bridges:
                # straight into the instance dict: a bridge's __setattr__ forwards unknown names to the HF module
                object.__setattr__(mod, "forward", _native_forward(mod))
            yield
        finally:
            for mod in bridges:
                mod.__dict__.pop("forward", None)

    def writable(self, site: S.Site) -> bool:
        return site.kind != "mlp.router"

    def run(self, inputs: dict, plan: list[PlanItem], make_ctx: Callable, stop_after: S.Site | None):
        saved: dict[str, torch.Tensor] = {}
        added = []
        n_saves = sum(item.save for item in plan)
        b, t = inputs["input_ids"].shape
        for item in plan:
            hp = self.bridge.hook_dict[tl_hook_name(self.spec, item.site)]
            router = item.site.kind == "mlp.router"

            def hook(x, hook=None, item=item, router=router):
                if router:
                    gate = get_module(self.plain_model, self.spec.mlp_path(item.site.layer, self.spec.router))
                    value = torch.nn.functional.linear(x, gate.weight, getattr(gate, "bias", None))
                    value = value.reshape(b, t, -1)
                    apply_hook_fns(value, item, make_ctx, False, _ROUTER_READ_ONLY)
                else:
                    value = x = apply_hook_fns(x, item, make_ctx)
                if item.save:
                    saved[item.site.name] = value.detach().clone()  # HF may add to it in place later
                # hook points may fire in another order than ours (pattern before z):
                # stop once every requested value is in hand
                if stop_after is not None and len(saved) == n_saves:
                    raise _StopForward
                return None if router else x

            added.append((hp, hp.add_hook(hook)))
        native = not any(item.site.kind in ATTENTION_INTERNAL_KINDS for item in plan)
        try:
            with contextlib.suppress(_StopForward), (self._native_attention() if native else contextlib.nullcontext()):
                out = self.runtime_model(**inputs)
                return out.logits, saved
            return None, saved
        finally:
            for hp, h in added:
                h.hook.remove()
                if h in hp.fwd_hooks:
                    hp.fwd_hooks.remove(h)


def _native_forward(bridge):
    """The HF attention module's own forward, with the bridge's ``hook_out`` (``hook_attn_out``)
    still firing on its output, as the bridge's re-implementation does."""
    original = bridge.original_component

    def forward(*args, **kwargs):
        out = original(*args, **kwargs)
        if isinstance(out, tuple):
            return (bridge.hook_out(out[0]), *out[1:])
        return bridge.hook_out(out)

    return forward


# --------------------------------------------------------------------------- nnsight


@dataclass(frozen=True)
class NNSightRef:
    """Where a site lives for the nnsight backend.

    ``path`` is a module path, ``io`` its ``input`` or ``output``; ``index`` picks a tuple
    element (``None``: the value itself, or element 0 when the module returns a tuple).
    ``view`` reshapes the raw tensor into the site's shape and back: ``heads``,
    ``router``, or ``q``/``k``/``v`` of a fused QKV projection. ``scale`` multiplies the
    raw value (Granite's residual multiplier). ``writable`` is False where a replaced
    value would not reach the residual stream.
    """

    path: str
    io: str
    index: int | None = None
    writable: bool = True
    view: str | None = None
    scale: float | None = None


def nnsight_ref(spec: ArchSpec, site: S.Site) -> NNSightRef:
    """The nnsight location of ``site`` on a model described by ``spec``."""
    k, L = site.kind, site.layer
    mult = spec.residual_multiplier
    if k == "embed":
        return NNSightRef(spec.embed, "output") if spec.pos_embed else NNSightRef(spec.layer_path(0), "input")
    if k == "resid_pre":
        return NNSightRef(spec.layer_path(L), "input")
    if k == "resid_post":
        return NNSightRef(spec.layer_path(L), "output")
    if k in ("attn.q", "attn.k", "attn.v"):
        which = k[-1]
        if spec.qkv is not None:
            return NNSightRef(spec.attn_path(L, spec.qkv), "output", view=which)
        return NNSightRef(spec.attn_path(L, getattr(spec, which)), "output", view="heads" if which == "q" else "kv_heads")
    if k == "attn.head_out":
        return NNSightRef(spec.attn_path(L, spec.o), "input", view="heads")
    if k == "attn.pattern":
        return NNSightRef(spec.attn_path(L), "output", index=1, writable=False)
    if k == "attn_out":
        if spec.ln1_post is not None:
            return NNSightRef(spec.layer_path(L, spec.ln1_post), "output")
        return NNSightRef(spec.attn_path(L), "output", index=0, scale=mult)
    if k == "resid_mid":
        if spec.ln2 is not None:
            return NNSightRef(spec.layer_path(L, spec.ln2), "input", writable=False)
        return NNSightRef(spec.mlp_path(L), "input", writable=False)  # post-norm only: the MLP reads it raw
    if k == "mlp.router":
        return NNSightRef(spec.mlp_path(L, spec.router), "output", index=0, writable=False, view="router")
    if k == "mlp.hidden":
        return NNSightRef(spec.mlp_path(L, spec.mlp_out), "input")
    if k == "mlp_out":
        if spec.ln2_post is not None:
            return NNSightRef(spec.layer_path(L, spec.ln2_post), "output")
        return NNSightRef(spec.mlp_path(L), "output", scale=mult)
    if k == "final_norm":
        return NNSightRef(spec.final_norm, "output")
    raise KeyError(k)


def _qkv_split(spec: ArchSpec, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-head q, k, v views of a fused QKV projection output ``[B, T, *]``."""
    b, t = x.shape[:2]
    h, hkv, dh = spec.n_heads, spec.n_kv_heads, spec.d_head
    if spec.qkv_layout == "concat":
        q, k, v = x.split([h * dh, hkv * dh, hkv * dh], dim=-1)
        return {"q": q.reshape(b, t, h, dh), "k": k.reshape(b, t, hkv, dh), "v": v.reshape(b, t, hkv, dh)}
    if spec.qkv_layout == "per_head":
        q, k, v = x.reshape(b, t, h, 3 * dh).chunk(3, dim=-1)
        return {"q": q, "k": k, "v": v}
    if spec.qkv_layout == "falcon":
        if spec.falcon_multi_query and hkv == 1:
            y = x.reshape(b, t, h + 2, dh)
            return {"q": y[:, :, :h], "k": y[:, :, h : h + 1], "v": y[:, :, h + 1 :]}
        if hkv == h:
            y = x.reshape(b, t, h, 3, dh)
            return {"q": y[..., 0, :], "k": y[..., 1, :], "v": y[..., 2, :]}
        y = x.reshape(b, t, hkv, h // hkv + 2, dh)
        return {"q": y[:, :, :, :-2].reshape(b, t, h, dh), "k": y[:, :, :, -2], "v": y[:, :, :, -1]}
    raise ValueError(f"Unknown fused QKV layout {spec.qkv_layout!r} for {spec.model_type}.")


def _qkv_merge(spec: ArchSpec, x: torch.Tensor, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of :func:`_qkv_split`: the fused output with ``parts`` written in."""
    b, t = x.shape[:2]
    q, k, v = parts["q"], parts["k"], parts["v"]
    if spec.qkv_layout == "concat":
        return torch.cat([q.reshape(b, t, -1), k.reshape(b, t, -1), v.reshape(b, t, -1)], -1)
    if spec.qkv_layout == "per_head":
        return torch.cat([q, k, v], -1).reshape(b, t, -1)
    if spec.falcon_multi_query and spec.n_kv_heads == 1:
        return torch.cat([q, k, v], 2).reshape(b, t, -1)
    if spec.n_kv_heads == spec.n_heads:
        return torch.stack([q, k, v], 3).reshape(b, t, -1)
    hkv = spec.n_kv_heads
    qg = q.reshape(b, t, hkv, -1, spec.d_head)
    return torch.cat([qg, k[:, :, :, None], v[:, :, :, None]], 3).reshape(b, t, -1)


def _envoy(root, path: str):
    env = root
    for part in path.split("."):
        env = env[int(part)] if part.isdigit() else getattr(env, part)
    return env


class NNSightBackend:
    """Hooks through an nnsight ``LanguageModel`` trace.

    Sites are read and written as the model's own module paths (from the model's
    :class:`~hooked.arch.ArchSpec`), touched in forward order as nnsight 0.8 requires;
    sites sharing one module value are handled together. Sites whose location is a
    norm's *input* (``resid_mid``), a returned attention map (``attn.pattern``) or router
    logits can be read but not written: writing them would not reach the residual stream.
    """

    name = "nnsight"

    def __init__(self, hf_model, tokenizer, spec: ArchSpec, lm=None, remote: bool = False):
        self.remote = remote  # NDIF remote execution: every trace runs with remote=True
        if lm is None:
            from nnsight import LanguageModel

            runtime = structural_copy(hf_model)
            runtime.eval()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lm = LanguageModel(runtime, tokenizer=copy.deepcopy(tokenizer))
        self.lm = lm
        self.runtime_model = lm._module
        self.spec = spec

    def writable(self, site: S.Site) -> bool:
        return nnsight_ref(self.spec, site).writable

    def _read(self, raw, ref: NNSightRef, b: int, t: int):
        value = raw
        if ref.index is not None:
            value = raw[ref.index]
        elif isinstance(raw, tuple):
            value = raw[0]
        if ref.view in ("q", "k", "v"):
            return _qkv_split(self.spec, value)[ref.view]
        if ref.view == "heads":
            value = value.reshape(*value.shape[:-1], self.spec.n_heads, self.spec.d_head)
        elif ref.view == "kv_heads":
            value = value.reshape(*value.shape[:-1], self.spec.n_kv_heads, self.spec.d_head)
        elif ref.view == "router":
            value = value.reshape(b, t, -1)
        if ref.scale is not None:
            value = value * ref.scale
        return value

    def _write(self, raw, ref: NNSightRef, new_values: dict):
        """The raw module value with the items' new values written in."""
        base = raw[ref.index if ref.index is not None else 0] if isinstance(raw, tuple) else raw
        if ref.view in ("q", "k", "v"):
            parts = _qkv_split(self.spec, base)
            parts.update(new_values)
            flat = _qkv_merge(self.spec, base, parts)
        else:
            (new,) = new_values.values()
            if ref.scale is not None:
                new = new / ref.scale
            flat = new.reshape(base.shape)
        if isinstance(raw, tuple):
            i = ref.index if ref.index is not None else 0
            return (*raw[:i], flat, *raw[i + 1 :])
        return flat

    def run(self, inputs: dict, plan: list[PlanItem], make_ctx: Callable, stop_after: S.Site | None):
        lm = self.lm
        saved: dict[str, torch.Tensor] = {}
        b, t = inputs["input_ids"].shape
        groups: dict[tuple, list] = {}
        for item in plan:  # plan is in forward order; group items that share a module value
            ref = nnsight_ref(self.spec, item.site)
            groups.setdefault((ref.path, ref.io), []).append((item, ref))
        batch = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        extra = {k: v for k, v in inputs.items() if k not in batch}
        result = {}
        if self.remote:
            extra["remote"] = True
        with lm.trace(batch, **extra) as tracer:
            for (path, io), items in groups.items():
                env = _envoy(lm, path)
                raw = env.output if io == "output" else env.input
                changed = {}
                for item, ref in items:
                    value = self._read(raw, ref, b, t)
                    new = apply_hook_fns(value, item, make_ctx, ref.writable,
                                     _ROUTER_READ_ONLY if ref.view == "router" else
                                     "with the nnsight backend (its nnsight location is a read-only view); use "
                                     "backend='tl' to write it")
                    if new is not value:
                        changed.setdefault(ref, {})[ref.view if ref.view in ("q", "k", "v") else "value"] = new
                    if item.save:
                        saved[item.site.name] = new.detach().clone().save()  # HF may add to it in place later
                for ref, new_values in changed.items():
                    raw = self._write(raw, ref, new_values)
                if changed:
                    if io == "output":
                        env.output = raw
                    else:
                        env.input = raw
                if stop_after is not None and any(item.site == stop_after for item, _ in items):
                    tracer.stop()
            if stop_after is None:
                result["logits"] = lm.output.logits.save()
        return result.get("logits"), saved


BACKENDS = {"tl": TLBackend, "nnsight": NNSightBackend}
