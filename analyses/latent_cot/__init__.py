"""Latent chain-of-thought study: synthetic multi-hop tasks, a tiny Coconut reasoner and its
curriculum trainer (with the pause-token control), step-wise causal metrics and plots."""
from .answer_modes import answer_modes, answer_modes_from_samples, question_probe, sample_trajectories, select_questions
from .metrics import decidability, influence_matrix, necessity
from .model import ReasonerConfig, TinyReasoner
from .plots import plot_commitment, plot_influence, plot_necessity
from .study import PROFILES, intervention_study, run_study
from .tasks import GraphReachability, PointerChasing, TaskBatch, TaskVocab, make_task
from .trainer import evaluate, tail_logits, train_reasoner, train_stage

__all__ = ["run_study", "intervention_study", "PROFILES", "ReasonerConfig", "TinyReasoner", "train_reasoner",
           "train_stage", "evaluate", "tail_logits", "PointerChasing", "GraphReachability", "TaskBatch",
           "TaskVocab", "make_task", "necessity", "influence_matrix", "decidability", "answer_modes",
           "answer_modes_from_samples", "sample_trajectories", "select_questions", "question_probe",
           "plot_necessity", "plot_influence", "plot_commitment"]
