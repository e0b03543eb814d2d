"""The two hook backends: the TransformerLens 4 bridge and nnsight.

Both expose one operation, :meth:`run`: a forward of the HF model in which, at
each planned site (in forward order), the registered hook functions may replace
the activation, the value is saved if asked, and the pass stops right after the
deepest site when no output is needed. Hooks exist only for the duration of a
run, so none is ever left on a model, whatever happens inside.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from . import sites as S


class _StopForward(Exception):
    """Raised inside a hook to end the forward after the deepest requested site."""


@dataclass
class PlanItem:
    site: S.Site
    fns: list
    save: bool


def _apply_fns(value: torch.Tensor, item: PlanItem, make_ctx: Callable, writable: bool = True) -> torch.Tensor:
    if not item.fns:
        return value
    ctx = make_ctx(item.site)
    for fn in item.fns:
        new = fn(value, ctx)
        if new is None:
            continue
        if not writable:
            raise ValueError(
                f"Site {item.site.name!r} cannot be written with the nnsight backend (its nnsight location is a "
                "read-only view); observe it (return None), use backend='tl' to write it, or write "
                "'attn_out'/'resid_post' instead."
            )
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
        value = new.to(value.dtype)
    return value


class TLBackend:
    """Hooks through the TransformerLens 4 ``TransformerBridge`` hook points.

    The bridge swaps the HF model's submodules for bridge components in place, so
    calling the HF model fires the bridge's hook points with numbers identical to
    plain ``transformers`` (checked by the parity tests).
    """

    name = "tl"

    def __init__(self, hf_model, tokenizer, arch: str, bridge=None):
        if bridge is None:
            from transformer_lens.model_bridge import TransformerBridge

            if not getattr(hf_model.config, "architectures", None):
                hf_model.config.architectures = [type(hf_model).__name__]
            name = getattr(hf_model.config, "_name_or_path", "") or arch
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bridge = TransformerBridge.boot_transformers(
                    name, hf_model=hf_model, tokenizer=tokenizer, dtype=hf_model.dtype
                )
        self.bridge = bridge
        self.hf_model = bridge.original_model
        self.arch = arch

    def writable(self, site: S.Site) -> bool:
        return True

    def run(self, inputs: dict, plan: list[PlanItem], make_ctx: Callable, stop_after: S.Site | None):
        saved: dict[str, torch.Tensor] = {}
        added = []
        n_saves = sum(item.save for item in plan)
        for item in plan:
            hp = self.bridge.hook_dict[S.tl_hook_name(self.arch, item.site)]

            def hook(t, hook=None, item=item):
                t = _apply_fns(t, item, make_ctx)
                if item.save:
                    saved[item.site.name] = t.detach()
                # hook points may fire in another order than ours (pattern before z):
                # stop once every requested value is in hand
                if stop_after is not None and len(saved) == n_saves:
                    raise _StopForward
                return t

            added.append((hp, hp.add_hook(hook)))
        try:
            out = self.hf_model(**inputs)
            logits = out.logits
        except _StopForward:
            logits = None
        finally:
            for hp, h in added:
                h.hook.remove()
                if h in hp.fwd_hooks:
                    hp.fwd_hooks.remove(h)
        return logits, saved


def _envoy(root, path: str):
    env = root
    for part in path.split("."):
        env = env[int(part)] if part.isdigit() else getattr(env, part)
    return env


class NNSightBackend:
    """Hooks through an nnsight ``LanguageModel`` trace.

    Sites are read and written as the model's own module paths (see
    :data:`hooked.sites.ARCH_TABLES`), accessed in forward order as nnsight 0.8
    requires. Sites whose nnsight location is a norm's *input* (``resid_mid``) or a
    returned attention map (``attn.pattern``) can be read but not written here:
    writing them would not reach the residual stream, so it is refused.
    """

    name = "nnsight"

    def __init__(self, hf_model, tokenizer, arch: str, lm=None, remote: bool = False):
        self.remote = remote  # NDIF remote execution: every trace runs with remote=True
        if lm is None:
            from nnsight import LanguageModel

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lm = LanguageModel(hf_model, tokenizer=tokenizer)
        self.lm = lm
        self.hf_model = lm._module
        self.arch = arch

    def writable(self, site: S.Site) -> bool:
        return S.nnsight_ref(self.arch, site).writable

    def run(self, inputs: dict, plan: list[PlanItem], make_ctx: Callable, stop_after: S.Site | None):
        lm = self.lm
        saved: dict[str, torch.Tensor] = {}
        refs = [(item, S.nnsight_ref(self.arch, item.site)) for item in plan]
        batch = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
        extra = {k: v for k, v in inputs.items() if k not in batch}
        result = {}
        if self.remote:
            extra["remote"] = True
        with lm.trace(batch, **extra) as tracer:
            for item, ref in refs:
                env = _envoy(lm, ref.path)
                raw = env.output if ref.io == "output" else env.input
                value = raw[ref.index] if ref.index is not None else raw
                shaped = value
                if ref.heads:
                    shaped = value.reshape(*value.shape[:-1], -1, self._d_head)
                new = _apply_fns(shaped, item, make_ctx, ref.writable)
                if new is not shaped:
                    flat = new.reshape(value.shape) if ref.heads else new
                    if ref.index is not None:
                        flat = (*raw[: ref.index], flat, *raw[ref.index + 1 :])
                    if ref.io == "output":
                        env.output = flat
                    else:
                        env.input = flat
                if item.save:
                    saved[item.site.name] = new.detach().save()
                if stop_after is not None and item.site == stop_after:
                    tracer.stop()
            if stop_after is None:
                result["logits"] = lm.output.logits.save()
        return result.get("logits"), saved

    @property
    def _d_head(self) -> int:
        cfg = self.hf_model.config
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


BACKENDS = {"tl": TLBackend, "nnsight": NNSightBackend}
