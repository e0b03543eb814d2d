"""Entropy of the differential information distribution (DID) of a policy update, after Won et al. 2025,
"Differential Information Distribution: A Bayesian Perspective on Direct Preference Optimization"
(arXiv 2505.23761; v1 "Differential Information: An Information-Theoretic Perspective on Preference
Optimization").

Definition (the paper's Theorem 3.2): the DID from pi_ref to pi is the normalised likelihood ratio

    q(y|x) = r(y|x) / Z(x),   r(y|x) = pi(y|x) / pi_ref(y|x),   Z(x) = sum_y r(y|x),
    H(q) = -sum_y q(y|x) log q(y|x) = log Z(x) - E_q[log r(y|x)].

The space Y of responses here is every token sequence of at most ``max_new_tokens`` tokens that ends at
EOS, plus every sequence cut at the limit without EOS (one outcome each), so pi and pi_ref are proper
distributions on Y and Z is finite. Identical models give the uniform DID on Y (the largest entropy).

Estimator (derived here; the text of the paper available to us gives the definition, not an
estimator). Sampling from pi or pi_ref and weighting by r is hopeless for sequences: Z = E_pi[1/pi_ref]
and one sample carries all the weight. Instead the proposal is the *locally normalised* DID, sampled
token by token with both models side by side:

    s(y_t | x, y_<t) = r_t(y_t) / Z_t,   r_t(v) = pi(v | x, y_<t) / pi_ref(v | x, y_<t),   Z_t = sum_v r_t(v),

so r(y) = prod_t r_t(y_t) and the importance weight of a draw is w(y) = r(y) / s(y) = prod_t Z_t(x, y_<t):
it depends only on how much ratio mass each prefix carries, which varies far less than 1/pi_ref. With
y_1..y_K ~ s, self-normalised weights w~_k = w_k / sum_j w_j:

    log Z^ = log mean_k w_k,     H^ = log Z^ - sum_k w~_k log r(y_k).

Two exact Rao-Blackwell steps cut the variance (see ``_draw``): ending at EOS is never sampled but
booked at every step with its exact weight, and the last token is summed over the vocabulary, so a
draw k is a small weighted tree with total weight A_k and weighted mean log-ratio m_k, and
w_k, log r(y_k) above become A_k, m_k.

The estimate is consistent (bias O(1/K)); the interval is a bootstrap over the K draws of each prompt
(percentile, ``level``), averaged over prompts. Diagnostics: the Kish effective sample size
ESS = 1 / sum_k w~_k^2 of every prompt. When any prompt has ESS < ``min_ess`` or ESS / K < ``min_ess_fraction``,
the weights rest on a few draws and the estimate is refused: ``entropy`` is None, ``str()`` says why,
``float()`` raises.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from . import _common as C


@dataclass
class DIDEstimate:
    """A DID entropy estimate (nats) with its interval and diagnostics; ``entropy`` is None when refused."""

    entropy: float | None
    interval: tuple[float, float] | None
    per_prompt: list[float]
    per_prompt_ess: list[float]
    log_z: list[float]
    k: int
    reliable: bool
    reason: str
    settings: dict = field(default_factory=dict)

    @property
    def ess_min(self) -> float:
        return min(self.per_prompt_ess)

    def __float__(self) -> float:
        if not self.reliable:
            raise ValueError(f"The DID entropy estimate is unreliable and has no value: {self.reason}")
        return float(self.entropy)

    def __str__(self) -> str:
        if not self.reliable:
            return f"DID entropy: not reported ({self.reason})"
        lo, hi = self.interval
        return (f"DID entropy {self.entropy:.3f} nats ({self.settings.get('level', 0.95):.0%} interval {lo:.3f} to "
                f"{hi:.3f}; ESS min {self.ess_min:.1f} of K={self.k}, {len(self.per_prompt)} prompts)")

    def to_dict(self) -> dict:
        return {"entropy": self.entropy, "interval": list(self.interval) if self.interval else None,
                "reliable": self.reliable, "reason": self.reason, "k": self.k, "ess_min": self.ess_min,
                "per_prompt": self.per_prompt, "per_prompt_ess": self.per_prompt_ess, "log_z": self.log_z,
                "settings": self.settings}


# ----------------------------------------------------------------------------- steppers
class TablePair:
    """An enumerable toy policy pair: next-token log-probs given by functions of the response prefix.

    ``policy_logits(prefix)`` / ``reference_logits(prefix)`` map a tuple of token ids to a [V] tensor."""

    def __init__(self, policy_logits, reference_logits, vocab_size: int):
        self.policy_logits, self.reference_logits, self.vocab_size = policy_logits, reference_logits, vocab_size

    def start(self, prompt, k: int):
        return [()] * k

    def logps(self, state):
        lp = torch.stack([torch.log_softmax(self.policy_logits(p).double(), -1) for p in state])
        lr = torch.stack([torch.log_softmax(self.reference_logits(p).double(), -1) for p in state])
        return lp, lr

    def advance(self, state, tokens):
        return [p + (int(t),) for p, t in zip(state, tokens)]

    def sequence_logps(self, y):
        lp = lr = 0.0
        for t in range(len(y)):
            lp += float(torch.log_softmax(self.policy_logits(y[:t]).double(), -1)[y[t]])
            lr += float(torch.log_softmax(self.reference_logits(y[:t]).double(), -1)[y[t]])
        return lp, lr


class _LMPair:
    """Both models of a DPO pair stepped together with KV caches (batch = the K draws of one prompt)."""

    def __init__(self, reference, policy, tokenizer):
        for m in (reference, policy):
            if C.is_hooked(m) and any(m.active_hooks.values()):
                raise RuntimeError(f"The model has active hooks {m.active_hooks}; DID sampling runs the plain "
                                   "transformers forward, which would ignore them. Remove the hooks (handle.remove()) "
                                   "or leave the `with` block first.")
        self.ref = C.hf_of(reference, "DID entropy sampling (reference model)")
        self.pol = C.hf_of(policy, "DID entropy sampling (policy model)")
        self.tok = tokenizer
        self.dev = C.device_of(policy)
        self.vocab_size = min(self.ref.get_output_embeddings().weight.shape[0],
                              self.pol.get_output_embeddings().weight.shape[0])

    def start(self, prompt, k):
        ids = torch.tensor([self.tok(prompt)["input_ids"]] * k, device=self.dev)
        state = {}
        for name, m in (("pol", self.pol), ("ref", self.ref)):
            out = m(input_ids=ids, use_cache=True)
            state[name] = (out.past_key_values, out.logits[:, -1, :self.vocab_size])
        return state

    def logps(self, state):
        return (torch.log_softmax(state["pol"][1].double(), -1).cpu(), torch.log_softmax(state["ref"][1].double(), -1).cpu())

    def advance(self, state, tokens):
        t = tokens.view(-1, 1).to(self.dev)
        for name, m in (("pol", self.pol), ("ref", self.ref)):
            out = m(input_ids=t, past_key_values=state[name][0], use_cache=True)
            state[name] = (out.past_key_values, out.logits[:, -1, :self.vocab_size])
        return state


# ----------------------------------------------------------------------------- estimator
@torch.no_grad()
def _draw(stepper, prompt, k: int, max_new_tokens: int, eos_id, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """K draws from the locally normalised DID, Rao-Blackwellised over EOS and the last token.

    Each draw walks T = ``max_new_tokens`` non-EOS tokens; at step t it also books the leaf
    "EOS here" with weight W_t r_t(EOS) exactly (instead of sampling it), and at the last step every
    token v as a leaf with weight W_T r_T(v), where W_t = prod_{u<t} (Z_u - r_u(EOS)) is the weight
    of the sampled non-EOS prefix. Every response y then enters with expected weight r(y), as in
    the plain sampler, with less variance. Returns per draw log A_k = log sum_leaves W and
    m_k = sum_leaves W log r / A_k (the draw's weighted mean log-ratio)."""
    state = stepper.start(prompt, k)
    log_w = torch.zeros(k, dtype=torch.float64)       # log W_t of the sampled prefix
    log_r = torch.zeros(k, dtype=torch.float64)       # log r of the sampled prefix
    leaf_lw, leaf_val = [], []
    for t in range(max_new_tokens):
        lp, lr = stepper.logps(state)
        a = (lp - lr).double()                                         # log r_t(v), [K, V]
        if t == max_new_tokens - 1:                                    # last step: every token is a leaf
            leaf_lw.append(log_w + torch.logsumexp(a, -1))
            leaf_val.append(log_r + (torch.softmax(a, -1) * a).sum(-1))
            break
        cont = a
        if eos_id is not None:
            leaf_lw.append(log_w + a[:, eos_id])
            leaf_val.append(log_r + a[:, eos_id])
            cont = a.clone()
            cont[:, eos_id] = float("-inf")
        y = torch.multinomial(torch.softmax(cont, -1).float(), 1, generator=gen)[:, 0]
        log_w = log_w + torch.logsumexp(cont, -1)
        log_r = log_r + a.gather(1, y[:, None])[:, 0]
        state = stepper.advance(state, y)
    lw, val = torch.stack(leaf_lw, 1), torch.stack(leaf_val, 1)
    return torch.logsumexp(lw, 1), (torch.softmax(lw, 1) * val).sum(1)


def _entropy(log_a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """H^ = log mean_k A_k - sum_k (A_k / sum_j A_j) m_k for each row of [..., K] tensors."""
    k = log_a.shape[-1]
    log_z = torch.logsumexp(log_a, -1) - math.log(k)
    return log_z - (torch.softmax(log_a, -1) * m).sum(-1)


def did_entropy_from_stepper(stepper, prompts, *, k: int = 128, max_new_tokens: int = 24, eos_id=None, seed: int = 0,
                             level: float = 0.95, n_boot: int = 400, min_ess: float = 10.0,
                             min_ess_fraction: float = 0.1) -> DIDEstimate:
    """The estimator of the module docstring over ``prompts`` with any stepper (``TablePair`` or the LM pair)."""
    if k < 2:
        raise ValueError(f"k must be >= 2 draws per prompt (default 128), got {k}.")
    gen = torch.Generator().manual_seed(seed)
    W, R = [], []
    for p in prompts:
        lw, lr = _draw(stepper, p, k, max_new_tokens, eos_id, gen)
        W.append(lw)
        R.append(lr)
    W, R = torch.stack(W), torch.stack(R)                                   # [P, K]
    h = _entropy(W, R)
    w = torch.softmax(W, -1)
    ess = 1.0 / (w * w).sum(-1)
    idx = torch.randint(0, k, (n_boot, 1, k), generator=gen).expand(-1, W.shape[0], -1)
    boot = _entropy(W.expand(n_boot, -1, -1).gather(2, idx), R.expand(n_boot, -1, -1).gather(2, idx)).mean(1)
    lo, hi = torch.quantile(boot, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=boot.dtype)).tolist()
    bad = [(i, float(e)) for i, e in enumerate(ess) if e < min_ess or e / k < min_ess_fraction]
    reason = "" if not bad else (
        f"{len(bad)} of {len(prompts)} prompts have an effective sample size below max({min_ess}, "
        f"{min_ess_fraction} K) = {max(min_ess, min_ess_fraction * k):.1f} (lowest {min(e for _, e in bad):.1f} of "
        f"K={k} draws), so a few draws carry the estimate. Raise k, or shorten max_new_tokens so that fewer "
        "ratio factors multiply into each weight.")
    settings = {"k": k, "max_new_tokens": max_new_tokens, "seed": seed, "level": level, "n_boot": n_boot,
                "min_ess": min_ess, "min_ess_fraction": min_ess_fraction,
                "proposal": "locally normalised DID, s(y_t) = r_t(y_t) / Z_t"}
    est = float(h.mean())
    return DIDEstimate(None if bad else est, None if bad else (lo, hi), h.tolist(), ess.tolist(),
                       (torch.logsumexp(W, -1) - math.log(k)).tolist(), k, not bad, reason, settings)


def did_entropy(reference, policy, prompts, *, k: int = 128, max_new_tokens: int = 24, seed: int = 0,
                tokenizer=None, **options) -> DIDEstimate:
    """DID entropy of a DPO pair (models as ``analyses.dpo`` takes them) over ``prompts``; see the module
    docstring. ``options``: ``level``, ``n_boot``, ``min_ess``, ``min_ess_fraction``."""
    C.check_pair(reference, policy)
    tok = C.tokenizer_of(policy, tokenizer)
    ctx = C.context_length(policy)
    for i, p in enumerate(prompts):
        n = len(tok(p)["input_ids"])
        if ctx is not None and n + max_new_tokens > ctx:
            raise ValueError(f"Prompt {i} has {n} tokens; with max_new_tokens={max_new_tokens} it exceeds the context "
                             f"of {ctx}. Shorten the prompt or lower max_new_tokens.")
    return did_entropy_from_stepper(_LMPair(reference, policy, tok), list(prompts), k=k, max_new_tokens=max_new_tokens,
                                    eos_id=tok.eos_token_id, seed=seed, **options)


def exact_did_entropy(pair: TablePair, max_new_tokens: int, eos_id=None) -> float:
    """H(q) by enumerating every response in Y (see the module docstring); for toy pairs only."""
    V = pair.vocab_size
    if (V - (eos_id is not None)) ** max_new_tokens > 200_000:
        raise ValueError(f"Enumerating {V} tokens over {max_new_tokens} steps is too large for an exact DID; use a "
                         "smaller toy (vocabulary ** length <= 200000).")
    non_eos = [v for v in range(V) if v != eos_id]
    seqs = [tuple(s) + (eos_id,) for n in range(max_new_tokens) for s in itertools.product(non_eos, repeat=n)] \
        if eos_id is not None else []
    seqs += [tuple(s) for s in itertools.product(non_eos, repeat=max_new_tokens)]
    log_r = torch.tensor([lp - lr for lp, lr in map(pair.sequence_logps, seqs)], dtype=torch.float64)
    log_q = log_r - torch.logsumexp(log_r, 0)
    return float(-(log_q.exp() * log_q).sum())
