"""The latent-trajectory study as a report (signals: :mod:`analyses.trajectory`; arXiv 2510.10494).

* **Prediction**: the AUROC of each signal, and of the output-confidence baselines, for telling correct
  traces from wrong ones (``sklearn.metrics.roc_auc_score``; 0.5 = no information, below 0.5 = the signal
  predicts in the other direction; it is not flipped). 95% intervals by a bootstrap over problems (the
  ``k`` samples of a problem are resampled together, since they share a problem's difficulty).
* **Answer selection among k samples**: majority vote over the parsed answers (ties: the answer seen
  first) against picking the answer of the sample a signal ranks best. Which end of a signal is "best"
  is not chosen on the problems it is scored on: with two folds of problems, each fold uses the
  direction of the signal's AUROC on the other fold (cross-fitting). Also shown: the first sample alone
  (pass@1) and the oracle (any sample correct). Accuracies over problems with Wilson 95% intervals.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hooked.figures import new_figure
from hooked.jsonutil import to_jsonable, write_json

from . import trajectory as T
from .introspection import wilson

PROFILES = {"quick": dict(n_problems=16, k=4, max_new_tokens=40), "full": dict(n_problems=48, k=6, max_new_tokens=64)}


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of ``scores`` for binary ``labels`` over finite scores; NaN when only one class is present.

    The Mann-Whitney form of :func:`probes.cv.auroc_rows` (ties ranked on average), which equals
    sklearn's ``roc_auc_score`` without its input validation: the bootstrap of :func:`auroc_ci` calls it
    thousands of times, where that validation took most of a minute."""
    from probes.cv import auroc_rows

    ok = np.isfinite(scores)
    return float(auroc_rows(np.asarray(scores, dtype=float)[ok][None], np.asarray(labels)[ok].astype(int))[0])


def auroc_ci(scores, labels, groups, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile 95% interval of the AUROC, resampling whole groups (problems) with replacement."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in uniq}
    vals = []
    for _ in range(n_boot):
        pick = np.concatenate([members[g] for g in rng.choice(uniq, size=uniq.size, replace=True)])
        v = auroc(scores[pick], labels[pick])
        if np.isfinite(v):
            vals.append(v)
    if len(vals) < n_boot // 2:
        return (float("nan"), float("nan"))
    return (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5)))


def majority(answers: list) -> object:
    """Most frequent non-``None`` answer; ties go to the one that appeared first; ``None`` if none parsed."""
    valid = [a for a in answers if a is not None]
    if not valid:
        return None
    counts = Counter(valid)
    best = max(counts.values())
    return next(a for a in valid if counts[a] == best)


def _by_problem(traces: T.Traces) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, p in enumerate(traces.problem_index):
        out.setdefault(p, []).append(i)
    return out


def selection(traces: T.Traces, signal: str, folds: int = 2) -> np.ndarray:
    """Per problem, whether the answer of the sample ranked best by ``signal`` is right (cross-fitted direction)."""
    groups = _by_problem(traces)
    probs = sorted(groups)
    fold = {p: j % folds for j, p in enumerate(probs)}
    idx = np.array(traces.problem_index)
    s = traces.signals[signal]
    hit = np.zeros(len(probs), dtype=bool)
    for j, p in enumerate(probs):
        train = np.array([fold[q] != fold[p] for q in idx])
        a = auroc(s[train], traces.correct[train])
        sign = -1.0 if np.isfinite(a) and a < 0.5 else 1.0
        rows = groups[p]
        vals = np.array([sign * s[r] if np.isfinite(s[r]) else -np.inf for r in rows])
        pick = rows[int(np.argmax(vals))]
        hit[j] = bool(traces.correct[pick])
    return hit


@dataclass
class TrajectoryStudy:
    traces: T.Traces
    aurocs: dict  # name -> {"auroc", "ci95"}
    selection: dict  # method -> {"rate", "k", "n", "ci95"}
    settings: dict

    def to_dict(self) -> dict:
        t = self.traces
        return to_jsonable({
            "settings": self.settings, "model": t.model, "n_traces": len(t.texts), "n_problems": len(t.problems),
            "accuracy_per_trace": self._rate(t.correct), "auroc": self.aurocs, "selection": self.selection,
            "mean_signal_correct": {s: float(np.nanmean(v[t.correct])) if t.correct.any() else None for s, v in t.signals.items()},
            "mean_signal_wrong": {s: float(np.nanmean(v[~t.correct])) if (~t.correct).any() else None for s, v in t.signals.items()},
            "auroc_per_layer": {s: [auroc(t.per_layer[s][:, j], t.correct) for j in range(len(t.layers))] for s in T.SIGNALS},
            "layers": t.layers,
            "examples": [{"problem": t.problems[t.problem_index[i]]["expr"], "answer": t.problems[t.problem_index[i]]["answer"],
                          "parsed": t.answers[i], "text": t.texts[i]} for i in range(min(4, len(t.texts)))],
        })

    @staticmethod
    def _rate(hits) -> dict:
        k, n = int(np.sum(hits)), int(np.size(hits))
        return {"rate": k / n if n else float("nan"), "k": k, "n": n, "ci95": list(wilson(k, n))}


def evaluate(traces: T.Traces, settings: dict | None = None, n_boot: int = 1000) -> TrajectoryStudy:
    groups = np.array(traces.problem_index)
    aurocs = {}
    for name, s in traces.signals.items():
        aurocs[name] = {"auroc": auroc(s, traces.correct), "ci95": list(auroc_ci(s, traces.correct, groups, n_boot))}
    by = _by_problem(traces)
    probs = sorted(by)
    answers = {p: [traces.answers[i] for i in by[p]] for p in probs}
    truth = {p: traces.problems[p]["answer"] for p in probs}
    sel = {
        "first sample": TrajectoryStudy._rate([traces.correct[by[p][0]] for p in probs]),
        "majority vote": TrajectoryStudy._rate([majority(answers[p]) == truth[p] for p in probs]),
        "oracle (any correct)": TrajectoryStudy._rate([traces.correct[by[p]].any() for p in probs]),
    }
    for name in list(T.SIGNALS) + list(T.BASELINES):
        sel[f"best by {name}"] = TrajectoryStudy._rate(selection(traces, name))
    return TrajectoryStudy(traces, aurocs, sel, dict(settings or {}))


def run_study(model, profile: str = "quick", n_problems: int | None = None, k: int | None = None,
              max_new_tokens: int | None = None, seed: int = 0, n_ops: int = 2, ops: str = "+-", max_operand: int = 9,
              progress: bool = False, **collect_kwargs) -> TrajectoryStudy:
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {sorted(PROFILES)}.")
    cfg = dict(PROFILES[profile])
    n_problems, k = n_problems or cfg["n_problems"], k or cfg["k"]
    max_new_tokens = max_new_tokens or cfg["max_new_tokens"]
    problems = T.arithmetic_problems(n_problems, n_ops=n_ops, max_operand=max_operand, seed=seed, ops=ops)
    traces = T.collect(model, problems, k=k, max_new_tokens=max_new_tokens, seed=seed, progress=progress, **collect_kwargs)
    settings = {"profile": profile, "n_problems": n_problems, "k": k, "max_new_tokens": max_new_tokens, "seed": seed,
                "task": f"{n_ops + 1} operands 1-{max_operand}, operators {'/'.join(ops)}, left to right", **{kk: v for kk, v in collect_kwargs.items() if kk != "layers"}}
    return evaluate(traces, settings)


def _grouped_bars(ax, studies: dict, names: list, table: str, key: str) -> None:
    """One bar group per name, one bar per model, with its 95% interval (``st.<table>[name]``'s ``key`` and
    ``ci95``); an interval that could not be computed (one class) is drawn without error bars."""
    width = 0.8 / len(studies)
    for j, (label, st) in enumerate(studies.items()):
        x = np.arange(len(names)) + (j - (len(studies) - 1) / 2) * width
        rows = [getattr(st, table)[n] for n in names]
        v = np.array([r[key] for r in rows])
        lo, hi = np.array([r["ci95"][0] for r in rows]), np.array([r["ci95"][1] for r in rows])
        ax.bar(x, v, width, yerr=[np.nan_to_num(v - lo), np.nan_to_num(hi - v)], capsize=3, label=label)


def plot_aurocs(studies: dict, path) -> Path:
    """AUROC (bootstrap 95% CI) of each signal and baseline, one bar group per model."""
    names = list(T.SIGNALS) + list(T.BASELINES)
    fig, ax = new_figure(figsize=(8, 3.4))
    _grouped_bars(ax, studies, names, "aurocs", "auroc")
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=7)
    ax.set(ylim=(0, 1), ylabel="AUROC for correctness", title="Latent-trajectory signals vs output confidence")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def plot_selection(studies: dict, path) -> Path:
    """Problems solved by each way of picking one of the k samples (Wilson 95% CI), one bar group per model."""
    methods = list(next(iter(studies.values())).selection)
    fig, ax = new_figure(figsize=(8, 3.6))
    _grouped_bars(ax, studies, methods, "selection", "rate")
    ax.set_xticks(range(len(methods)), [m.replace("best by ", "by ") for m in methods], fontsize=7, rotation=30, ha="right")
    ax.set(ylim=(0, 1.05), ylabel="problems solved (Wilson 95% CI)", title="Answer selection among k samples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def _ci(v: dict, key: str = "auroc") -> str:
    lo, hi = v["ci95"]
    return f"{v[key]:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(v[key]) else "n/a (one class)"


def markdown(studies: dict, prefix: str = "") -> str:
    first = next(iter(studies.values()))
    s = {"task": "given problems", "max_new_tokens": "?", **first.settings,
         "n_problems": len(first.traces.problems), "k": first.traces.k}
    head = ("Latent-trajectory signals (Vilas et al. 2025, arXiv 2510.10494; formulas in `analyses/trajectory.py`, "
            f"a reconstruction from the paper's description): {s['n_problems']} generated problems ({s['task']}), "
            f"k = {s['k']} samples each (temperature {s.get('temperature', 0.7)}, up to {s['max_new_tokens']} tokens); signals "
            f"from `resid_post` over the reasoning tokens ({s.get('n_blocks', 8)} blocks, per-layer scale-normalised, "
            "averaged over layers). AUROC for "
            "correctness with a bootstrap-over-problems 95% CI; selection directions cross-fitted over two folds of problems.\n")
    names = list(T.SIGNALS) + list(T.BASELINES)
    cols = list(studies)
    lines = [head, "| signal | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    lines.append("| accuracy per trace | " + " | ".join(
        f"{st.to_dict()['accuracy_per_trace']['rate']:.3f} ({st.to_dict()['accuracy_per_trace']['k']}/{len(st.traces.texts)})"
        for st in studies.values()) + " |")
    for n in names:
        lines.append(f"| AUROC {n} | " + " | ".join(_ci(st.aurocs[n]) for st in studies.values()) + " |")
    for m in first.selection:
        lines.append(f"| select: {m} | " + " | ".join(
            f"{st.selection[m]['rate']:.3f} [{st.selection[m]['ci95'][0]:.2f}, {st.selection[m]['ci95'][1]:.2f}] "
            f"({st.selection[m]['k']}/{st.selection[m]['n']})" for st in studies.values()) + " |")
    few = [label for label, st in studies.items() if min(st.traces.correct.sum(), (~st.traces.correct).sum()) < 10]
    if few:
        lines.append(f"\n**Few traces in one class** ({', '.join(few)}: fewer than 10 correct or wrong traces): the AUROCs "
                     "and their bootstrap intervals (which drop resamples with one class) rest on a handful of traces and "
                     "are not evidence either way.")
    lines.append(f"\nPlots: `{prefix}trajectory_auroc.png`, `{prefix}trajectory_selection.png`; numbers: `{prefix}trajectory.json`.\n")
    return "\n".join(lines)


def write_report(studies: dict, out_dir, prefix: str = "") -> str:
    """``studies``: ``{label: TrajectoryStudy}`` (e.g. base and DPO policy); JSON, plots, markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "trajectory.json", {k: st.to_dict() for k, st in studies.items()})
    plot_aurocs(studies, out / "trajectory_auroc.png")
    plot_selection(studies, out / "trajectory_selection.png")
    text = markdown(studies, prefix)
    (out / "trajectory.md").write_text("## Latent-trajectory signals\n\n" + text)
    return text


def demo_section(model, out_dir, quick: bool = True, policy=None, model_spec: str | None = None,
                 progress: bool = True, **sizes) -> tuple[dict, str]:
    """``(numbers, markdown)`` for ``policylens demo``; ``policy`` (a loaded DPO policy) is measured alongside;
    if ``None`` and ``model_spec`` names the base, a cached DPO policy (:mod:`analyses.cached_policy`) is used."""
    profile = "quick" if quick else "full"
    # sizes: run_study's n_problems / k / max_new_tokens, overriding the profile
    if policy is None and model_spec is not None:
        import hooked

        from .cached_policy import cached_policy

        policy = hooked.load_model(str(cached_policy(model_spec, steps=4 if quick else 12, progress=progress)))
    studies = {"base": run_study(model, profile, progress=progress, **sizes)}
    if policy is not None:
        from .introspection import check_same_family

        check_same_family(model, policy)
        studies["DPO policy"] = run_study(policy, profile, progress=progress, **sizes)
    text = write_report(studies, Path(out_dir) / "trajectory", prefix="trajectory/")
    return {k: st.to_dict() for k, st in studies.items()}, text
