"""The latent-CoT study: train tiny reasoners (Coconut curriculum + pause-token control) on
pointer chasing, then run the step-wise do-intervention analysis of Li et al. 2026 (arXiv 2602.08783) on them; Coconut is Hao et al. 2024
(arXiv 2412.06769), the pause tokens Goyal et al. 2024 (arXiv 2310.02226)."""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from hooked.jsonutil import to_jsonable
from interventions.latent_cot import LatentStats, make_operator, sweep_steps

from . import metrics, plots
from .answer_modes import answer_modes
from .model import ReasonerConfig, TinyReasoner
from .trainer import evaluate, torch_threads, train_reasoner

PROFILES = {
    # stage steps: stage 0 (explicit CoT, shared), then stages 1..K for coconut and for the pause control
    # (the last stage, all steps latent, is the hardest and gets the most steps)
    "quick": {"seeds": [0], "stage0": 300, "latent_stages": [80, 80, 80, 200], "pause_stages": [60, 60, 60, 100],
              "n_eval": 256, "task": {"task": "pointer_chasing", "n_nodes": 8, "hops": 3}},
    # the demo's run (both profiles): the same curriculum, shortened (accuracies lower than "quick"'s)
    "demo_quick": {"seeds": [0], "stage0": 200, "latent_stages": [50, 50, 50, 120], "pause_stages": [40, 40, 40, 60],
                   "n_eval": 128, "task": {"task": "pointer_chasing", "n_nodes": 8, "hops": 3}},
    "full": {"seeds": [0, 1, 2], "stage0": 400, "latent_stages": [100, 100, 100, 300],
             "pause_stages": [80, 80, 80, 150], "n_eval": 512,
             "task": {"task": "pointer_chasing", "n_nodes": 8, "hops": 3}},
}
OPERATORS = ["zero", "mean", "step_mean", "noise", "pure_noise", "swap", "patch", "project_out"]
INFLUENCE_OPERATOR = "step_mean"


def intervention_study(reasoner: TinyReasoner, n_eval: int = 256, seed: int = 0,
                       operators=OPERATORS, influence_operator: str = INFLUENCE_OPERATOR) -> dict:
    """Necessity per step per operator, influence matrix, decidability and answer modes on
    ``n_eval`` fresh questions (and their counterfactuals: same graph, other start node)."""
    with torch_threads(1):
        return _intervention_study(reasoner, n_eval, seed, operators, influence_operator)


@torch.no_grad()
def _intervention_study(reasoner, n_eval, seed, operators, influence_operator) -> dict:
    runner, K = reasoner.runner(), reasoner.n_steps
    base, other = reasoner.task.counterfactual(torch.Generator().manual_seed(50_000 + seed), n_eval)
    gold = base.answer
    kw = dict(n_latents=K, answer_ids=gold[:, None])
    clean = runner.rollout(base.question, **kw)
    cf = runner.rollout(other.question, n_latents=K)
    stats = LatentStats.from_latents(clean.latents)
    extra = {"patch": {"source": cf.latents}, "project_out": {"direction": stats.step_mean}}
    out = {"necessity": {}, "n_eval": n_eval}
    sweeps = {}
    for name in operators:
        op = make_operator(name, stats if name not in extra else None, **extra.get(name, {}))
        sweeps[name] = sweep = sweep_steps(runner, base.question, operator=op, **kw)
        per_step = [metrics.necessity(clean, roll, gold) for roll in sweep.intervened]
        res = {key: [d[key] for d in per_step] for key in per_step[0]}
        if name == "patch":
            res["to_counterfactual"] = [(r.readout_logits[:, K].argmax(-1) == other.answer).float().mean().item()
                                        for r in sweep.intervened]
        out["necessity"][name] = res
    inf = metrics.influence_matrix(sweeps[influence_operator], stats.mean_norm)
    out["influence"] = {"operator": influence_operator, "kl": inf["kl"].tolist(), "distance": inf["distance"].tolist(),
                        "kl_summary": inf["kl_summary"], "distance_summary": inf["distance_summary"]}
    out["decidability"] = metrics.decidability(clean, gold, base.chain, runner.logit_lens(clean.hidden))
    out["answer_modes"] = answer_modes(runner, base.question, n_latents=K, clean=clean, seed=seed)
    out["latent_mean_norm"] = stats.mean_norm
    return out


def _train_seed(profile: dict, seed: int, progress: bool):
    cfg = ReasonerConfig(task=dict(profile["task"]), seed=seed)
    stage0, h0 = train_reasoner(cfg, steps_per_stage=[profile["stage0"]], progress=progress)
    coconut, hc = train_reasoner(cfg, steps_per_stage=profile["latent_stages"], init=stage0, first_stage=1,
                                 progress=progress)
    pause_cfg = ReasonerConfig(task=dict(profile["task"]), seed=seed, mode="pause")
    pause, hp = train_reasoner(pause_cfg, steps_per_stage=profile["pause_stages"], init=stage0, first_stage=1,
                               progress=progress)
    return stage0, coconut, pause, {"stage0": h0, "coconut": hc, "pause": hp}


def _mean(values):
    """Mean over seeds; entries that are NaN in every seed (j <= i in the influence matrix) stay NaN."""
    arr = np.array(values, dtype=float)
    if not arr.size:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(arr, 0).tolist()


def run_study(out_dir, profile: str = "quick", seeds=None, progress: bool = True) -> dict:
    """Train, intervene, plot. Writes results.json, the PNGs and the seeds' models into ``out_dir``.

    profile: "quick" (one seed, about a minute on 2 cores) or "full" (three seeds, several minutes).
    Returns a JSON-serialisable dict with every number.
    """
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {sorted(PROFILES)}.")
    prof = dict(PROFILES[profile])
    seeds = list(prof["seeds"] if seeds is None else seeds)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = {"profile": profile, "task": prof["task"], "seeds": seeds, "per_seed": {}}
    with torch_threads(1):
        for seed in seeds:
            stage0, coconut, pause, hist = _train_seed(prof, seed, progress)
            test = coconut.task.sample(prof["n_eval"], torch.Generator().manual_seed(90_000 + seed))
            K = coconut.n_steps
            seed_res = {
                "cot_exact_match": evaluate(stage0, test, 0)["exact"],
                "no_latent_acc_of_stage0": evaluate(stage0, test, K)["answer"],
                "coconut_acc": evaluate(coconut, test, K)["answer"],
                "pause_acc": evaluate(pause, test, K)["answer"],
                "coconut_stage_val": [s["best"]["exact"] for s in hist["coconut"]["stages"]],
                "pause_stage_val": [s["best"]["exact"] for s in hist["pause"]["stages"]],
                "train_seconds": sum(h["seconds"] for h in hist.values()),
            }
            seed_res["study"] = intervention_study(coconut, prof["n_eval"], seed)
            coconut.save(out_dir / f"reasoner_seed{seed}")
            result["per_seed"][str(seed)] = seed_res
    per = list(result["per_seed"].values())
    ops = list(per[0]["study"]["necessity"])
    summary = {
        "coconut_acc": [p["coconut_acc"] for p in per], "pause_acc": [p["pause_acc"] for p in per],
        "cot_exact_match": [p["cot_exact_match"] for p in per],
        "necessity": {op: {k: _mean([p["study"]["necessity"][op][k] for p in per])
                           for k in ("d_acc", "kl", "d_logp", "flip_to_wrong", "flip_to_right")} for op in ops},
        "influence_kl": _mean([p["study"]["influence"]["kl"] for p in per]),
        "influence_distance": _mean([p["study"]["influence"]["distance"] for p in per]),
        "locality_kl": _mean([p["study"]["influence"]["kl_summary"]["locality"] for p in per]),
        "locality_distance": _mean([p["study"]["influence"]["distance_summary"]["locality"] for p in per]),
        "acc_after_n_steps": _mean([p["study"]["decidability"]["acc_after_n_steps"] for p in per]),
        "logit_lens_acc": _mean([p["study"]["decidability"]["logit_lens_acc"] for p in per]),
    }
    for key in ("coconut_acc", "pause_acc"):
        summary[key + "_mean"] = float(np.mean(summary[key]))
        summary[key + "_std"] = float(np.std(summary[key]))
    modes = [p["study"]["answer_modes"] for p in per]
    summary["answer_modes_n_questions"] = [m["n_questions"] for m in modes]
    summary["output_commitment"] = _mean([m["output_commitment"] for m in modes if m["output_commitment"]])
    for side in ("A", "B"):
        key = "representational_commitment_" + side
        summary[key] = _mean([m[key] for m in modes if m[key]])
    summary["decidability_first_correct_hist"] = _mean([p["study"]["decidability"]["first_correct_hist"] for p in per])
    summary["decidability_stable_correct_hist"] = _mean([p["study"]["decidability"]["stable_correct_hist"]
                                                         for p in per])
    result["summary"] = summary
    figs = {"necessity": plots.plot_necessity(summary["necessity"], out_dir / "latent_cot_necessity.png"),
            "influence": plots.plot_influence(np.array(summary["influence_kl"]), np.array(summary["influence_distance"]),
                                              INFLUENCE_OPERATOR, out_dir / "latent_cot_influence.png")}
    if summary["output_commitment"] and summary["representational_commitment_A"]:
        figs["commitment"] = plots.plot_commitment(summary["output_commitment"],
                                                   (summary["representational_commitment_A"],
                                                    summary["representational_commitment_B"]),
                                                   out_dir / "latent_cot_commitment.png")
    result["figures"] = {k: str(v) for k, v in figs.items()}
    result["seconds"] = time.perf_counter() - t0
    result = to_jsonable(result)
    (out_dir / "latent_cot_results.json").write_text(json.dumps(result, indent=2))
    return result

