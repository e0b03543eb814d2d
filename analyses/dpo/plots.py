"""PNG plots of a DPO shift report (matplotlib's object-oriented API; the caller's backend is left alone)."""
from __future__ import annotations

from pathlib import Path

from hooked.figures import new_figure

from .shift_report import ShiftReport


def _nan(xs):
    """None (a measure reported as unavailable) becomes NaN, a gap in the line."""
    return [float("nan") if x is None else x for x in xs]


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    return name


def write_plots(r: ShiftReport, out: Path) -> list[str]:
    """displacement.png, layers.png, localisation.png (and training.png when a TRL log is present) of a
    :class:`~analyses.dpo.shift_report.ShiftReport`; returns the file names."""
    out = Path(out)
    names = []
    d = r.displacement
    fig, ax = new_figure(figsize=(5, 3.2))
    x = range(len(d.labels))
    ax.plot(x, d.chosen, "o-", label="chosen")
    ax.plot(x, d.rejected, "s-", label="rejected")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(list(x), [str(v) for v in d.labels], rotation=30, fontsize=8)
    ax.set_ylabel("Δ log π(y|x) vs reference")
    ax.set_title(f"Log-likelihood displacement ({r.preferences.name})")
    ax.legend()
    names.append(_save(fig, out, "displacement.png"))

    it = r.internals
    L = list(range(r.n_layers))
    fig, axs = new_figure(2, 3, figsize=(12, 6))
    axs[0, 0].plot(L, it.representation.cka, label="linear CKA")
    axs[0, 0].plot(L, it.representation.cosine, label="cosine")
    axs[0, 0].set_title("policy vs reference activations")
    axs[0, 0].legend()
    axs[0, 1].plot(L, it.lens.kl)
    axs[0, 1].set_title("logit-lens KL(π‖π_ref)")
    axs[0, 2].plot(L, it.knowledge_entropy.reference, label="reference")
    axs[0, 2].plot(L, it.knowledge_entropy.policy, "--", label="policy")
    axs[0, 2].set_title("knowledge entropy")
    axs[0, 2].legend()
    g = it.geometry
    axs[1, 0].plot(L, g.rankme_reference, label="reference")
    axs[1, 0].plot(L, g.rankme_policy, "--", label="policy")
    axs[1, 0].set_title("RankMe (covariance), last token")
    axs[1, 0].legend()
    axs[1, 1].plot(L, _nan(g.alpha_req_reference), label="reference")
    axs[1, 1].plot(L, _nan(g.alpha_req_policy), "--", label="policy")
    axs[1, 1].set_title("α-ReQ" if not g.alpha_req_unavailable else "α-ReQ (unavailable: too few texts)")
    axs[1, 1].legend()
    for name, pt in it.probe_transfer.items():
        axs[1, 2].plot(L, pt.ref_on_ref, label=f"{name}: ref→ref")
        axs[1, 2].plot(L, pt.ref_on_policy, "--", label=f"{name}: ref→policy")
        axs[1, 2].plot(L, pt.cosine, ":", label=f"{name}: direction cos")
    if it.probe_transfer:
        axs[1, 2].set_title("probe transfer")
        axs[1, 2].legend(fontsize=7)
    else:
        axs[1, 2].set_title("probe transfer (not run)")
    for a in axs.flat:
        a.set_xlabel("layer")
    names.append(_save(fig, out, "layers.png"))

    loc = r.localisation
    fig, ax = new_figure(figsize=(6, 3.5))
    ax.plot(loc.layers, loc.patch_policy_into_reference, "o-", label="patch π→ref (recovered)")
    ax.plot(loc.layers, loc.patch_reference_into_policy, "s-", label="patch ref→π (removed)")
    if loc.steering is not None:
        ax.plot(loc.layers, loc.steering.recovered, "^-", label="steering ref+Δ (recovered)")
    ax.axhline(1, color="grey", lw=0.8)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel("fraction of preference log-odds shift")
    ax.set_title("Causal localisation of the DPO shift")
    ax.legend(fontsize=8)
    names.append(_save(fig, out, "localisation.png"))

    log = [e for e in r.train_log or [] if "loss" in e and "rewards/margins" in e]
    if log:
        fig, ax = new_figure(figsize=(5, 3.2))
        steps = [e.get("step", i + 1) for i, e in enumerate(log)]
        ax.plot(steps, [e["loss"] for e in log], label="DPO loss")
        ax.plot(steps, [e["rewards/margins"] for e in log], label="reward margin (batch)")
        ax.set_xlabel("step")
        ax.legend()
        ax.set_title("TRL training log")
        names.append(_save(fig, out, "training.png"))
    return names
