"""Figures of the latent-CoT study (matplotlib's object-oriented API; the caller's backend is left alone)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from probes.plots import new_figure


def plot_necessity(necessity: dict, path) -> Path:
    """necessity: {operator: {"d_acc": [K], "kl": [K]}} (means over seeds)."""
    fig, axes = new_figure(1, 2, figsize=(10, 3.6))
    for name, vals in necessity.items():
        steps = np.arange(len(vals["d_acc"]))
        axes[0].plot(steps, vals["d_acc"], marker="o", label=name)
        axes[1].plot(steps, vals["kl"], marker="o", label=name)
    axes[0].set(xlabel="intervened latent step t", ylabel="Δ accuracy", title="Necessity: accuracy change")
    axes[1].set(xlabel="intervened latent step t", ylabel="KL(clean || intervened)", title="Necessity: answer KL")
    axes[0].axhline(0, color="grey", lw=0.5)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_influence(kl: np.ndarray, dist: np.ndarray, operator: str, path) -> Path:
    fig, axes = new_figure(1, 2, figsize=(9, 3.8))
    for ax, m, title in ((axes[0], kl, "KL of read-out at step j"), (axes[1], dist, "|h'_j - h_j| / mean norm")):
        im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis")
        ax.set(xlabel="measured step j", ylabel="intervened step i", title=title)
        ax.set_xticks(range(m.shape[1]))
        ax.set_yticks(range(m.shape[0]))
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"Influence matrix (operator: {operator})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_commitment(output_curve, rep_curves, path) -> Path:
    """``rep_curves`` = (mean p_A(t) over A-trajectories, over B-trajectories) of the per-question probe."""
    fig, axes = new_figure(1, 2, figsize=(9, 3.4))
    axes[0].plot(range(len(output_curve)), output_curve, marker="o")
    axes[0].axhline(0.5, color="grey", lw=0.5)
    axes[0].set(xlabel="latent steps before exit n", ylabel="p(A) / (p(A) + p(B))", title="Output-level commitment")
    rep_a, rep_b = rep_curves
    axes[1].plot(range(1, len(rep_a) + 1), rep_a, marker="o", color="C1", label="trajectories answering A")
    axes[1].plot(range(1, len(rep_b) + 1), rep_b, marker="s", color="C2", label="trajectories answering B")
    axes[1].axhline(0.5, color="grey", lw=0.5)
    axes[1].legend(fontsize=8)
    axes[1].set(xlabel="latent step t", ylabel="probe p_A(t)", title="Representational commitment (per-question probe)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)
