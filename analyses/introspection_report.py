"""The introspection study as a report: base model, base with a refusal-like direction ablated, and its
DPO policy, each run through :func:`analyses.introspection.run_grid`; JSON numbers, plots and a markdown
section (measures and protocol: :mod:`analyses.introspection`).

The mechanisms paper (arXiv 2603.21396) reports that DPO, unlike SFT, elicits detection and that
ablating refusal directions raises it; this study measures the same comparisons on whatever model it is
given, with Wilson 95% intervals, and states null results as they come.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hooked.figures import new_figure
from hooked.jsonutil import write_json

from . import introspection as I
from .introspection_data import BASELINE_WORDS, CONCEPTS, HARMFUL, HARMLESS

PROFILES = {
    # layer fractions and strengths are subsets of the reference's sweeps (0.4-0.8 of depth; 1, 2, 4, 8)
    "quick": dict(n_concepts=6, n_baseline=20, fractions=(0.5, 0.7), strengths=(2.0, 8.0), n_trials=4, n_control=16),
    # the quick demo's smoke grid (policylens demo --quick): one layer, one strength, 8 baseline words
    "demo_quick": dict(n_concepts=3, n_baseline=8, fractions=(0.66,), strengths=(8.0,), n_trials=2, n_control=2),
    "full": dict(n_concepts=12, n_baseline=40, fractions=(0.4, 0.5, 0.6, 0.7, 0.8), strengths=(1.0, 2.0, 4.0, 8.0), n_trials=6, n_control=24),
}
REFUSAL_FRACTION = 0.5  # depth at which the refusal-like direction is read (fixed in advance, not searched)


@dataclass
class IntrospectionStudy:
    results: dict  # condition -> IntrospectionResult
    settings: dict

    def to_dict(self) -> dict:
        return {"settings": self.settings, "conditions": {k: r.to_dict() for k, r in self.results.items()}}


def layers_at(model, fractions) -> list[int]:
    """Layer ``round(f * (n_layers - 1))`` per depth fraction ``f`` (reference ``get_layer_at_fraction``)."""
    return sorted({int(round(f * (model.n_layers - 1))) for f in fractions})


def run_study(base, policy=None, profile: str = "quick", ablate_refusal: bool = True, concepts=None,
              layers=None, strengths=None, n_trials: int | None = None, n_control: int | None = None,
              progress: bool = False) -> IntrospectionStudy:
    """Run the grid on ``base``, on ``base`` with a refusal-like direction ablated, and on ``policy``.

    Each model injects its own concept vectors (extracted from it with the same prompts and baseline).
    """
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {sorted(PROFILES)}.")
    cfg = dict(PROFILES[profile])
    concepts = list(concepts) if concepts is not None else CONCEPTS[: cfg["n_concepts"]]
    baseline = BASELINE_WORDS[: cfg["n_baseline"]]
    layers = I.check_layers(base, layers if layers is not None else layers_at(base, cfg["fractions"]))
    strengths = [float(s) for s in (strengths if strengths is not None else cfg["strengths"])]
    n_trials = n_trials or cfg["n_trials"]
    if policy is not None:
        I.check_same_family(base, policy)
    n_control = max(n_trials, n_control or cfg["n_control"])
    common = dict(concepts=concepts, layers=layers, strengths=strengths, baseline_words=baseline, n_trials=n_trials,
                  n_control=n_control, progress=progress)
    # the ablated condition injects the same base vectors (extracted without the ablation): extract them once
    base_vectors = I.concept_vectors(base, concepts, layers, baseline)
    results = {"base": I.run_grid(base, condition="base", vectors=base_vectors, **common)}
    settings = {"profile": profile, "layers": layers, "strengths": strengths, "n_trials": n_trials, "n_control": n_control,
                "concepts": concepts, "n_baseline": len(baseline), "prefill": I.PREFILL}
    if ablate_refusal:
        rl = int(round(REFUSAL_FRACTION * (base.n_layers - 1)))
        r = I.refusal_direction(base, rl, HARMFUL, HARMLESS)
        settings.update(refusal_layer=rl, refusal_norm=float(r.norm()), n_refusal_pairs=len(HARMFUL))
        results["base, refusal ablated"] = I.run_grid(base, condition="base, refusal ablated", ablate=r,
                                                      vectors=base_vectors, **common)
    if policy is not None:
        settings["policy"] = policy.name
        results["DPO policy"] = I.run_grid(policy, condition="DPO policy", **common)
    return IntrospectionStudy(results, settings)


def plot_rates(study: IntrospectionStudy, path) -> Path:
    """Pooled detection, false-positive, identification and introspection rates per condition, with Wilson 95% CIs."""
    measures = [("detection", lambda r: r.detection()), ("false positives", lambda r: r.false_positives()),
                ("identification", lambda r: r.identification()), ("introspection", lambda r: r.introspection())]
    conds = list(study.results)
    fig, ax = new_figure(figsize=(9.5, 3.6))
    width = 0.8 / len(conds)
    for k, cond in enumerate(conds):
        r = study.results[cond]
        vals = [f(r) for _, f in measures]
        x = np.arange(len(measures)) + (k - (len(conds) - 1) / 2) * width
        rate = np.array([v["rate"] for v in vals])
        lo = rate - np.array([v["ci95"][0] for v in vals])
        hi = np.array([v["ci95"][1] for v in vals]) - rate
        ax.bar(x, rate, width, yerr=[lo, hi], capsize=3, label=cond)
    chance = next(iter(study.results.values())).chance
    ax.axhline(chance, color="grey", ls=":", lw=1, label=f"chance identification (1/{round(1 / chance)})")
    ax.set_xticks(range(len(measures)), [m for m, _ in measures])
    ax.set(ylim=(0, 1.05), ylabel="rate (Wilson 95% CI)", title="Concept injection, pooled over the grid")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_grids(study: IntrospectionStudy, path) -> Path:
    """Heatmaps (layer x strength) of detection and identification per condition."""
    conds = list(study.results)
    fig, axes = new_figure(len(conds), 2, figsize=(7, 2.4 * len(conds)), squeeze=False)
    for i, cond in enumerate(conds):
        r = study.results[cond]
        for j, what in enumerate(("detection", "identification")):
            ax = axes[i, j]
            im = ax.imshow(r.grid(what), vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_xticks(range(len(r.strengths)), [f"{s:g}" for s in r.strengths])
            ax.set_yticks(range(len(r.layers)), r.layers)
            ax.set(xlabel="strength", ylabel="layer", title=f"{cond}: {what}")
            fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def _pct(v: dict) -> str:
    lo, hi = v["ci95"]
    return f"{100 * v['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({v['k']}/{v['n']})"


def markdown(study: IntrospectionStudy, prefix: str = "") -> str:
    s = study.settings
    rows = []
    for cond, r in study.results.items():
        p_inj, p_ctl = float(r.log_odds.sigmoid().mean()), float(r.control_log_odds.sigmoid().mean())
        rows.append(f"| {cond} | {_pct(r.detection())} | {_pct(r.false_positives())} | {p_inj:.3f} / {p_ctl:.3f} | "
                    f"{_pct(r.identification())} | {_pct(r.introspection())} |")
    chance = next(iter(study.results.values())).chance
    refusal = (f" The refusal-like direction is the difference of means of {s['n_refusal_pairs']} harmful and harmless "
               f"requests at `resid_post.{s['refusal_layer']}` (norm {s['refusal_norm']:.2f}), projected out of every "
               "residual write at every token (Arditi et al. 2024)." if "refusal_layer" in s else "")
    return (
        f"Concept injection (Lindsey 2025, arXiv 2601.01828; protocol and prompts of the reference code of arXiv "
        f"2603.21396): {len(s['concepts'])} concepts ({', '.join(s['concepts'])}), vectors = concept minus the mean of "
        f"{s['n_baseline']} baseline words at the last token of the chat prompt; injected at layers {s['layers']} with "
        f"strengths {s['strengths']} from the token before `Trial` to the end; {s['n_trials']} trial{'s' if s['n_trials'] != 1 else ''} per cell, "
        f"{s['n_control']} uninjected control trials. Scored from "
        f"the model's own log-probabilities, no judge: detected = log p(yes) > log p(no) for the first answer token; "
        f"identified = the injected concept's first token ranks first among the {len(s['concepts'])} after the prefill "
        f"`{s['prefill']}` (chance {100 * chance:.1f}%).{refusal}\n\n"
        "| condition | detection | false positives | mean p(yes) injected / control | identification | detected and identified |\n"
        "|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n\nRates pooled over the grid, Wilson 95% intervals, k/n trials. "
        f"Plots: `{prefix}introspection_rates.png`, `{prefix}introspection_grid.png`; numbers: `{prefix}introspection.json`.\n"
    )


def write_report(study: IntrospectionStudy, out_dir, prefix: str = "") -> str:
    """``introspection.json``, the two plots and ``introspection.md`` under ``out_dir``; returns the markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "introspection.json", study.to_dict())
    plot_rates(study, out / "introspection_rates.png")
    plot_grids(study, out / "introspection_grid.png")
    text = markdown(study, prefix)
    (out / "introspection.md").write_text("## Introspection under concept injection\n\n" + text)
    return text


def demo_section(model, out_dir, quick: bool = True, policy=None, model_spec: str | None = None,
                 progress: bool = True, profile: str | None = None, **sizes) -> tuple[dict, str]:
    """``(numbers, markdown)`` for ``policylens demo``. ``policy``: a loaded DPO policy; if ``None`` and
    ``model_spec`` names the base, a cached DPO policy (:func:`analyses.cached_policy.cached_policy`) is used.
    ``profile`` (default "quick" / "full" by ``quick``) and ``sizes`` (:func:`run_study`'s concepts / layers /
    strengths / n_trials / n_control, overriding the profile) set the grid."""
    import hooked

    from .cached_policy import cached_policy

    if policy is None and model_spec is not None:
        policy = hooked.load_model(str(cached_policy(model_spec, steps=4 if quick else 12, progress=progress)))
    study = run_study(model, policy, profile=profile or ("quick" if quick else "full"), progress=progress, **sizes)
    text = write_report(study, Path(out_dir) / "introspection", prefix="introspection/")
    return study.to_dict(), text
