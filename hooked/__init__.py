"""policylens core: load models, name sites, capture activations, apply hooks (TL bridge or nnsight).

>>> import hooked
>>> model = hooked.load_model("smollm2-135m-instruct")          # packaged, offline
>>> acts = model.capture(["The capital of France is"], "resid_post.*")
>>> acts.stack("resid_post.*").shape                              # [layers, prompts, d_model]
"""

from . import sites
from .activations import ActivationSet, ShardedActivations
from .context import HookContext, HookHandle
from .handles import UndoHandle
from .loading import TINY_ARCHS, load_model, tiny_config, tiny_hf_model, tiny_model
from .model import HookedModel
from .packaged import PACKAGED, list_models

__all__ = [
    "ActivationSet",
    "HookContext",
    "HookHandle",
    "HookedModel",
    "PACKAGED",
    "ShardedActivations",
    "TINY_ARCHS",
    "list_models",
    "load_model",
    "sites",
    "tiny_config",
    "tiny_hf_model",
    "tiny_model",
    "UndoHandle",
]
