"""policylens probes: read activations, never change the model (except the explicit, undoable
:func:`resuscitate`).

>>> import hooked, probes
>>> model = hooked.load_model("smollm2-135m-instruct")
>>> sweep = probes.layer_sweep(model, "factual")             # per-layer CV accuracy, depth markers
>>> ke = probes.knowledge_entropy(model, texts)               # Kim et al. 2024
>>> lens = probes.logit_lens(model, ["The capital of France is"])
"""
from . import datasets
from .artifacts import load_probe, save_probe, to_steering
from .attention import attention_entropy, pattern_entropy, row_entropy
from .datasets import ConceptDataset
from .entropy import KnowledgeEntropy, entropy_from_coefficients, knowledge_entropy
from .geometry import alpha_req, rankme, site_geometry
from .lens import LensResult, lens_from_hidden, logit_lens
from .linear import LinearProbe
from .plots import plot_depth, plot_knowledge_entropy, plot_lens, plot_position_heatmap
from .resuscitate import Resuscitation, resuscitate
from .sae import SAE, hook_for_site, site_for_hook
from .sae_metrics import SparseLatents, capture_latents, feature_report, reconstruction_metrics
from .sae_train import TopKSAETrainer, corpus as sae_corpus, smollm2_sae, train_model_sae
from .sweep import (PositionSweep, SweepResult, layer_sweep, position_sweep, sweep_activations,
                    sweep_positions)
from .cv import depth_markers, make_folds

__all__ = [
    "ConceptDataset", "KnowledgeEntropy", "LensResult", "LinearProbe", "PositionSweep",
    "Resuscitation", "SAE", "SparseLatents", "SweepResult", "TopKSAETrainer", "capture_latents", "feature_report",
    "hook_for_site", "reconstruction_metrics", "sae_corpus", "site_for_hook", "smollm2_sae", "train_model_sae", "alpha_req", "attention_entropy", "datasets", "depth_markers",
    "entropy_from_coefficients", "knowledge_entropy", "layer_sweep", "lens_from_hidden",
    "load_probe", "logit_lens", "make_folds", "pattern_entropy", "plot_depth",
    "plot_knowledge_entropy", "plot_lens", "plot_position_heatmap", "position_sweep", "rankme",
    "resuscitate", "row_entropy", "save_probe", "site_geometry", "sweep_activations", "sweep_positions",
    "to_steering",
]
