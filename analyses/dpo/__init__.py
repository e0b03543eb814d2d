"""DPO policy-shift analyses: how a DPO policy moved away from its reference, and where inside the model
the move lives.

>>> from analyses import dpo
>>> run = dpo.train("smollm2-135m-instruct", "knowledge", "runs/knowledge", steps=30, save_every=10)
>>> numbers = dpo.run_shift_report("smollm2-135m-instruct", run.policy_dir, "knowledge", "runs/knowledge/report",
...                                checkpoints=run)
"""
from .causal import localise
from .internals import (geometry, knowledge_entropy_shift, lens_kl, linear_cka, per_layer_internals, probe_transfer,
                        representation_similarity)
from .policy import (did_entropy, displacement, implicit_reward, kl_from_samples, pair_logprobs, policy_samples,
                     sample, sequence_logprobs)
from .preferences import PreferenceSet, get as get_preferences, knowledge_set, load_jsonl, style_set
from .report import LIMITS, run_shift_report
from .train import TrainResult, train

__all__ = [
    "LIMITS", "PreferenceSet", "TrainResult", "did_entropy", "displacement", "geometry", "get_preferences",
    "implicit_reward", "kl_from_samples", "knowledge_entropy_shift", "knowledge_set", "lens_kl", "linear_cka",
    "load_jsonl", "localise", "pair_logprobs", "per_layer_internals", "policy_samples", "probe_transfer",
    "representation_similarity", "run_shift_report", "sample", "sequence_logprobs", "style_set", "train",
]
