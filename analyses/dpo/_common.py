"""Shared plumbing for the DPO analyses: resolving models, checking a pair, encoding preference pairs
exactly as TRL's DPOTrainer does, and running forwards through either a ``hooked.HookedModel`` (so active
hooks apply) or a plain ``transformers`` causal LM."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from hooked.util import batch_slices


def is_hooked(model) -> bool:
    return hasattr(model, "hf_model") and hasattr(model, "hooks") and hasattr(model, "capture")


def resolve(model, backend: str = "tl"):
    """A ``hooked.HookedModel`` for anything ``hooked.load_model`` accepts (returned unchanged if already one)."""
    if is_hooked(model):
        return model
    import hooked

    return hooked.load_model(model, backend=backend)


def hf_of(model, what: str | None = None):
    """The plain transformers model behind ``model``. ``what`` names a caller that runs it directly:
    then a HookedModel with active hooks is refused (running it would silently ignore them)."""
    if not is_hooked(model):
        return model
    if what is not None:
        model.require_no_hooks(what)
    return model.hf_model


def tokenizer_of(model, tokenizer=None):
    if tokenizer is not None:
        return tokenizer
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError(f"No tokenizer found on {type(model).__name__}; pass tokenizer= explicitly.")
    return tok


def device_of(model) -> torch.device:
    return next(hf_of(model).parameters()).device


def context_length(model) -> int | None:
    cfg = hf_of(model).config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def check_pair(reference, policy) -> None:
    """Raise a ValueError when two models cannot be compared layer by layer and token by token."""
    rc, pc = hf_of(reference).config, hf_of(policy).config
    r_arch, p_arch = getattr(rc, "model_type", "?"), getattr(pc, "model_type", "?")
    if r_arch != p_arch:
        raise ValueError(f"Reference and policy must share one architecture; got reference '{r_arch}' and "
                         f"policy '{p_arch}'. Pass a policy trained from this reference (same model family).")
    for key in ("num_hidden_layers", "hidden_size", "vocab_size"):
        a, b = getattr(rc, key, None), getattr(pc, key, None)
        if a != b:
            raise ValueError(f"Reference and policy differ in {key}: {a} vs {b}. Per-layer comparison and "
                             f"log-ratios need the same shape and vocabulary; pass a policy fine-tuned from "
                             f"the reference.")
    rt, pt = tokenizer_of(reference), tokenizer_of(policy)
    if len(rt) != len(pt) or rt.get_vocab() != pt.get_vocab():
        raise ValueError(f"Reference and policy tokenizers differ (sizes {len(rt)} vs {len(pt)}); log-ratios "
                         f"log pi(y|x) - log pi_ref(y|x) need one vocabulary. Use the reference's tokenizer "
                         f"for the policy.")


@dataclass
class EncodedPairs:
    """Token ids of prompt+completion for a list of (prompt, completion) rows, right-padded.

    ``completion_mask[i, t]`` is 1 where token t of row i is scored as part of the completion."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor

    def __len__(self):
        return self.input_ids.shape[0]

    def batch(self, sl: slice, device) -> "EncodedPairs":
        # trim right padding of this batch so short batches run short
        length = int(self.attention_mask[sl].sum(1).max())
        return EncodedPairs(*(t[sl, :length].to(device) for t in
                              (self.input_ids, self.attention_mask, self.completion_mask)))


def encode(tokenizer, prompts, completions, add_eos: bool = True, max_length: int | None = None) -> EncodedPairs:
    """Tokenize like TRL's DPOTrainer (non-conversational): ``tok(prompt)`` and ``tok(prompt + completion
    + eos)``; the completion starts where the two token lists diverge. Raises when a sequence would be
    longer than ``max_length`` (the model's context) instead of silently truncating."""
    if len(prompts) != len(completions):
        raise ValueError(f"Got {len(prompts)} prompts but {len(completions)} completions; they must pair up.")
    eos = tokenizer.eos_token or ""
    rows, masks = [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        if not c:
            raise ValueError(f"Completion {i} for prompt {p[:40]!r} is empty; every completion needs text.")
        if add_eos and eos and not c.endswith(eos):
            c = c + eos
        p_ids = tokenizer(p)["input_ids"]
        full = tokenizer(p + c)["input_ids"]
        start = 0
        while start < min(len(p_ids), len(full)) and p_ids[start] == full[start]:
            start += 1
        if start >= len(full):
            raise ValueError(f"Completion {i} ({c[:40]!r}) adds no tokens to its prompt.")
        if max_length is not None and len(full) > max_length:
            raise ValueError(f"Prompt+completion {i} is {len(full)} tokens, longer than the context of "
                             f"{max_length} tokens ({p[:40]!r}...). Shorten the prompt or completion, or use a "
                             f"model with a longer context.")
        rows.append(full)
        masks.append([0] * start + [1] * (len(full) - start))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    comp = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks)):
        ids[i, : len(r)] = torch.tensor(r)
        att[i, : len(r)] = 1
        comp[i, : len(r)] = torch.tensor(m)
    return EncodedPairs(ids, att, comp)


def logits_of(model, input_ids, attention_mask) -> torch.Tensor:
    """Logits [B,T,V]; through ``HookedModel.forward`` (active hooks apply) or the HF model's call."""
    if is_hooked(model):
        return model.forward(input_ids, attention_mask)
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


def token_logprobs(logits: torch.Tensor, enc: EncodedPairs) -> torch.Tensor:
    """Per-row sum of log p(token_t | tokens_<t) over completion tokens (TRL's sequence log-prob)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tgt = enc.input_ids[:, 1:]
    per_tok = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return (per_tok * enc.completion_mask[:, 1:]).sum(1)


batches = batch_slices  # slice(0, b), slice(b, 2b), ... (hooked.util)
