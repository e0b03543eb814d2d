"""The stages of ``policylens demo``. Each takes the demo context and returns
``(numbers, markdown)``; sizes depend on ``ctx.quick`` (the quick profile: small grids) and
are stated in the report, so a reader knows how much data stands behind each number."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import hooked
import interventions as iv
import probes
from analyses import (dpo, introspection_data, introspection_report, perturbation, trajectory_report, transfer,
                      transfer_report)
from analyses.latent_cot import run_study
from hooked.jsonutil import to_jsonable
from probes.plots import new_figure

from .corpora import CAPTURE_PROMPTS, ENTROPY_TEXTS
from .latent_cot_markdown import latent_cot_markdown
from .sae_section import sae_section


@dataclass
class DemoContext:
    """What every stage gets: how the model was named (it is loaded on first use, so a worker process that
    only runs the model-free latent-CoT study never loads it), where to write, and the profile."""

    model_spec: str
    out: Path
    quick: bool
    backend: str
    device: str
    keep_checkpoints: bool = False  # keep the DPO checkpoints and final policies (GBs) on disk
    policy_dir: Path | None = None  # the `knowledge` DPO policy, kept until the studies that compare with it ran
    _model: object = None
    _policy: object = None

    @property
    def model(self):
        """The base model as a HookedModel, loaded on first use."""
        if self._model is None:
            self._model = hooked.load_model(self.model_spec, backend=self.backend, device=self.device)
        return self._model

    def model_info(self) -> dict | None:
        """Name and shape of the base model for the report's header, or None if it was not loaded here."""
        m = self._model
        return None if m is None else {"name": m.name, "arch": m.arch, "n_layers": m.n_layers, "d_model": m.d_model}

    def keep_policy(self, policy, policy_dir: Path) -> None:
        """Keep the `dpo` stage's knowledge policy (loaded, and where it lies) for the policy studies."""
        self._policy, self.policy_dir = policy, Path(policy_dir)

    def policy(self):
        """The demo's DPO policy (trained by the `dpo` stage) as a HookedModel, or None if that stage did not run."""
        if self._policy is None and self.policy_dir is not None and Path(self.policy_dir).exists():
            self._policy = hooked.load_model(str(self.policy_dir), backend=self.backend, device=self.device)
        return self._policy

    def release_policy(self) -> int:
        """Delete the kept policy (unless ``keep_checkpoints``); returns the bytes freed."""
        self._policy, freed = None, 0
        if self.policy_dir is not None and Path(self.policy_dir).exists() and not self.keep_checkpoints:
            freed = sum(f.stat().st_size for f in Path(self.policy_dir).rglob("*") if f.is_file())
            shutil.rmtree(self.policy_dir)
        return freed


def _fmt(x, nd=3):
    return "n/a" if x is None else f"{x:.{nd}f}"


def stage_capture(ctx):
    m = ctx.model
    acts = m.capture(CAPTURE_PROMPTS, ["resid_post.*", "mlp.hidden.*", "logits"], positions="last", progress=False)
    norms = acts.stack("resid_post.*").norm(dim=-1).mean(1)  # [layers]
    top = [m.tokenizer.decode([int(i)]) for i in acts["logits"].argmax(-1)]
    acts.save(ctx.out / "capture")
    numbers = {
        "n_prompts": len(CAPTURE_PROMPTS),
        "n_sites": len(acts.sites),
        "resid_norm_by_layer": [round(float(x), 3) for x in norms],
        "next_token": dict(zip(CAPTURE_PROMPTS, top)),
    }
    rows = "\n".join(f"| {p} | `{t}` |" for p, t in zip(CAPTURE_PROMPTS, top))
    text = (f"Captured {len(acts.sites)} sites (all `resid_post`, all `mlp.hidden`, `logits`) at the last token of "
            f"{len(CAPTURE_PROMPTS)} prompts; saved as safetensors in `capture/`.\n\n"
            f"Mean residual norm rises from {norms[0]:.1f} (layer 0) to {norms[-1]:.1f} (layer {m.n_layers - 1}).\n\n"
            f"| prompt | greedy next token |\n|---|---|\n{rows}")
    return numbers, text


def stage_entropy(ctx):
    texts = ENTROPY_TEXTS[: 6 if ctx.quick else 12]
    ke = probes.knowledge_entropy(ctx.model, texts, batch_size=6, progress=True)
    per = [float(x) for x in ke.per_layer]
    _bar(per, "layer", "entropy (nats)", f"Knowledge entropy per layer ({ctx.model.name})",
         ctx.out / "knowledge_entropy_layers.png")
    d_mlp = ctx.model.d_mlp

    numbers = {"n_texts": len(texts), "total": float(ke.total), "per_layer": per, "max_per_layer": math.log(d_mlp)}
    lo, hi = min(range(len(per)), key=per.__getitem__), max(range(len(per)), key=per.__getitem__)
    text = (f"Knowledge entropy (Kim et al. 2024, arXiv 2410.01380, Eq. 2; padding excluded) on {len(texts)} texts: total "
            f"**{ke.total:.3f}** nats summed over {len(per)} layers (uniform would be {len(per)}×ln({d_mlp}) = "
            f"{len(per) * math.log(d_mlp):.1f}). Lowest layer {lo} ({per[lo]:.3f}), highest layer {hi} ({per[hi]:.3f}).")
    return numbers, text


def stage_probes(ctx):
    n = 80 if ctx.quick else 120  # `policylens probe` sweeps a dataset at any size
    names = ["factual", "emotional"] if ctx.quick else ["factual", "emotional", "inferential"]
    L = ctx.model.n_layers  # quick: every third layer and the last (fewer probe fits)
    sites = [f"resid_post.{i}" for i in sorted(set(range(0, L, 3)) | {L - 1})] if ctx.quick else "resid_post.*"
    sweeps = {}
    for name in names:
        ds = probes.datasets.load(name, n=n)
        sweeps[name] = probes.layer_sweep(ctx.model, ds, sites=sites, positions="last", cv=5, progress=True)
    probes.plot_depth(sweeps, path=ctx.out / "concept_depth.png", title=f"Concept depth ({ctx.model.name})")
    numbers, rows = {}, []
    for name, s in sweeps.items():
        numbers[name] = {
            "n": n, "acc_mean": [float(x) for x in s.acc_mean], "peak_layer": int(s.peak_layer),
            "peak_acc": float(s.peak_acc),
            "jump_layer": None if s.jump_layer is None else int(s.jump_layer),
            "converging_layer": int(s.converging_layer),
            "selectivity_at_peak": None if s.selectivity is None else float(s.selectivity[list(s.layers).index(s.peak_layer)]),
        }
        v = numbers[name]
        rows.append(f"| {name} | {n} | {v['peak_acc']:.3f} | {v['peak_layer']} | {v['jump_layer']} | "
                    f"{v['converging_layer']} | {_fmt(v['selectivity_at_peak'])} |")
    layers = "every third layer and the last" if ctx.quick else "every layer"
    text = (f"Linear probes (logistic, 5-fold, group-aware) on `resid_post` ({layers}) at the last token. "
            "Selectivity = accuracy minus the accuracy of a Hewitt & Liang control task (a random label per word type, "
            "arXiv 1909.03368); jump = steepest rise between probed layers, converging = first steady layer after it "
            "(concept depth, Jin et al., arXiv 2404.07066). Plot: `concept_depth.png`.\n\n"
            "| dataset | n | peak acc | peak layer | jump layer | converging layer | selectivity at peak |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    return numbers, text


def stage_steering(ctx):
    m = ctx.model
    layer = round(0.3 * m.n_layers)  # 9 of 30 on SmolLM2: where generated sentiment moved monotonically
    site = f"resid_post.{layer}"
    pairs = iv.data.sentiment_pairs()
    vec = iv.extract(m, pairs, site, method="mean_diff")
    vec.save(ctx.out / "sentiment_vector")
    prompts = ["I think the movie was", "My day at work was", "The food at the restaurant was"]
    if not ctx.quick:
        prompts += ["The weather this weekend will be", "Reading the review, I felt"]
    mults = [-8.0, -4.0, 0.0, 4.0, 8.0] if not ctx.quick else [-8.0, 0.0, 8.0]
    ls = iv.multiplier_sweep(m, vec, prompts, positive=" good", negative=" bad", multipliers=mults)
    # one generation step costs about as much as a forward of the whole batch: few, short continuations
    gs = iv.generation_sweep(m, vec, prompts, multipliers=mults, max_new_tokens=8 if ctx.quick else 16)
    neutral = ["The train departs at", "Water is made of", "The number after seven is"]
    kl = iv.side_effect_kl(m, vec, neutral, multiplier=mults[-1])
    mean_ld = [float(x) for x in ls.mean_metric]
    numbers = {
        "site": site, "multipliers": mults, "logit_diff_mean": mean_ld,
        "steerability_slope_mean": ls.steerability,
        "anti_steerable_fraction": ls.anti_steerable_fraction,
        "generation_sentiment_mean": [float(x) for x in gs.scores.mean(1)],
        "generation_slope": float(gs.slope), "generation_spearman": float(gs.spearman),
        "side_effect_kl": float(kl),
        "examples": {str(mu): gs.texts[i][0] for i, mu in enumerate(mults)},
    }
    ex = "\n".join(f"- ×{mu:+g}: _{prompts[0]}_ **{gs.texts[i][0].strip()}**" for i, mu in enumerate(mults))
    text = (f"CAA mean-difference vector from {len(pairs)} positive/negative pairs at `{site}`, added at all positions.\n\n"
            f"Logit difference ` good`−` bad` by multiplier: {', '.join(_fmt(x, 2) for x in mean_ld)}; "
            f"mean per-prompt steerability slope {_fmt(numbers['steerability_slope_mean'])}, anti-steerable fraction "
            f"{_fmt(numbers['anti_steerable_fraction'], 2)}.\n\nLexicon sentiment of greedy continuations by multiplier: "
            f"{', '.join(_fmt(x, 2) for x in numbers['generation_sentiment_mean'])} (slope {gs.slope:.3f}, Spearman "
            f"{gs.spearman:.2f}). Side-effect KL on neutral prompts at ×{mults[-1]:g}: {kl:.3f} nats.\n\n{ex}")
    return numbers, text


# DPO sizes of the demo. `policylens dpo-shift` scores a policy at the report's full sizes (analyses.dpo.report.LIMITS:
# 16 pairs and prompts, 128 DID draws, every layer); the demo trains one short run and scores it on a small grid.
DPO_SIZES = {
    "quick": dict(steps=4, batch_size=2, save_every=4, sets=["knowledge"],
                  limits=dict(n_pairs=4, n_prompts=2, k_samples=2, did_k=16, max_new_tokens=6, probe_datasets=(),
                              geometry_n=24, batch_size=16)),
    "full": dict(steps=4, batch_size=4, save_every=2, sets=["knowledge"],
                 limits=dict(n_pairs=8, n_prompts=3, k_samples=4, did_k=32, max_new_tokens=10, probe_n=64,
                             geometry_n=112, batch_size=16)),
}


def _dpo_layers(n_layers: int, quick: bool) -> list[int]:
    """Patching / steering layers of the DPO localisation: the middle and last layer (quick) or spread over
    depth, the first and last included (4, full)."""
    if quick:
        return [n_layers // 2, n_layers - 1]
    return sorted({round(i * (n_layers - 1) / 3) for i in range(4)})


def stage_dpo(ctx):
    size = DPO_SIZES["quick" if ctx.quick else "full"]
    steps, sets = size["steps"], size["sets"]
    limits = dict(size["limits"], layers=_dpo_layers(ctx.model.n_layers, ctx.quick))
    freed = {}
    numbers, text = {}, [f"DPO with TRL ({steps} steps of {size['batch_size']} pairs, beta 0.1, lr 5e-6) from "
                         f"`{ctx.model.name}`, "
                         f"then the policy-shift report, per preference set (demo sizes: {limits['n_pairs']} pairs, "
                         f"{limits['n_prompts']} sampled prompts, {limits['did_k']} DID draws per prompt, layers "
                         f"{limits['layers']}"
                         + ("" if limits.get("probe_datasets", True) else ", no probe transfer")
                         + "; `policylens dpo-shift` scores a policy at the full sizes).\n"]
    for name in sets:
        run = dpo.train(ctx.model, name, ctx.out / f"dpo_{name}" / "train", steps=steps,
                        save_every=size["save_every"], batch_size=size["batch_size"],
                        n_pairs=size["batch_size"] * steps, progress=True)
        report_dir = ctx.out / f"dpo_{name}"
        try:  # the base model is the reference as loaded; the knowledge policy is loaded once, for the studies too
            policy = hooked.load_model(str(run.policy_dir), backend=ctx.backend, device=ctx.device)
            numbers[name] = dpo.run_shift_report(ctx.model, policy, name, report_dir,
                                                 checkpoints=run, progress=True, **limits)
            if name == "knowledge":
                ctx.keep_policy(policy, run.policy_dir)
            del policy
        finally:  # scored (or failed): the report keeps their numbers, the disk not their weights
            if not ctx.keep_checkpoints:  # the knowledge policy stays until the policy studies ran
                freed[name] = run.remove_models(keep_policy=name == "knowledge")
            if name == "knowledge" and run.policy_dir.exists():
                ctx.policy_dir = run.policy_dir  # (also when scoring failed: the policy studies can still use it)
        md_path = report_dir / "report.md"
        if md_path.exists():
            body = md_path.read_text().split("\n", 1)[-1].replace("](", f"](dpo_{name}/").replace("\n## ", "\n### ")
            text.append(f"### Preference set `{name}`\n{body}")
    if freed:
        text.append(f"Checkpoints and policies deleted after scoring ({sum(freed.values()) / 2**20:.0f} MB); "
                    "`policylens demo --keep-checkpoints` keeps them.")
    return to_jsonable(numbers), "\n".join(text)


def stage_latent_cot(ctx):
    out = ctx.out / "latent_cot"
    # both demo profiles: one seed, short curricula (`policylens latent-cot --profile full` trains three, longer)
    numbers = run_study(out, profile="demo_quick", progress=True)
    return numbers, latent_cot_markdown(numbers)


def stage_sae(ctx):
    return sae_section(ctx.model, ctx.out / "sae", quick=ctx.quick)


# The four policy studies compare the base model with the `dpo` stage's knowledge policy. The demo runs
# small grids (quick: about 10-30 s each; full: under a minute each, one thread); each study's subcommand
# (`policylens introspect`, `transfer`, `perturb`, `trajectory`) runs its full grid.
def stage_introspection(ctx):
    L = ctx.model.n_layers - 1
    if ctx.quick:  # 3 concepts, one layer at 0.66 depth, strength 8, 2 trials, 2 controls, 8 baseline words;
        # base and DPO policy only (each trial is one forward of a long conversation)
        profile, sizes = "demo_quick", dict(ablate_refusal=False)
    else:
        profile, sizes = "quick", dict(concepts=introspection_data.CONCEPTS[:3], layers=[round(0.66 * L)],
                                       strengths=[2.0, 8.0], n_trials=2, n_control=4)
    return introspection_report.demo_section(ctx.model, ctx.out, quick=ctx.quick, profile=profile,
                                             policy=ctx.policy(), progress=True, **sizes)


def stage_transfer(ctx):
    # rank None (the full map) would repeat the `transferred` row; multiplier 0 is the same unsteered forward
    # for every vector, so the demo's slopes are read from -4 and +4 alone
    # quick: SmolLM2 -> its DPO policy only (Gemma 3's 262k-token unembedding made the Gemma pair most of the
    # stage); full: SmolLM2 -> Gemma 3 270M too. Without a policy (dpo stage skipped) quick maps to Gemma 3.
    sizes = dict(n_align=48, ranks=(1, 16), n_sweep=(), n_random=2, multipliers=(-4.0, 4.0),
                 eval_prompts=transfer.EVAL_PROMPTS[:4]) if ctx.quick else \
        dict(n_align=64, ranks=(1, 16, 64), n_sweep=(), n_random=3, multipliers=(-4.0, 4.0))
    policy = ctx.policy()
    pairs = ("cross_model",) if policy is None else ("to_policy",) if ctx.quick else ("cross_model", "to_policy")
    return transfer_report.demo_section(ctx.model, ctx.out / "transfer", quick=True, policy=policy, pairs=pairs,
                                        threads=None, **sizes)


def stage_perturbation(ctx):
    prompts = perturbation.default_prompts(ctx.model, 2, chat=True)
    L = ctx.model.n_layers
    layers = sorted({0, L // 2, L - 1}) if ctx.quick else sorted({0, L // 3, 2 * L // 3, L - 1})
    sizes = dict(n_random=1, max_new_tokens=6, probe_n=48) if ctx.quick else \
        dict(n_random=1, max_new_tokens=10, probe_n=64)
    return perturbation.demo_section(ctx.model, ctx.out / "perturbation", quick=True, policy=ctx.policy(),
                                     prompts=prompts, layers=layers, threads=None, **sizes)


def stage_trajectory(ctx):
    # single-step sums: SmolLM2 solves about half, so correctness has two classes (multi-step is at the floor)
    sizes = dict(n_problems=6, k=2, max_new_tokens=12, n_ops=1) if ctx.quick else \
        dict(n_problems=8, k=3, max_new_tokens=16, n_ops=1)
    return trajectory_report.demo_section(ctx.model, ctx.out, quick=ctx.quick, policy=ctx.policy(), progress=True,
                                          **sizes)


def _bar(values, xlabel, ylabel, title, path):
    fig, ax = new_figure(figsize=(7, 3.2))
    ax.bar(range(len(values)), values)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@dataclass
class Stage:
    name: str
    title: str
    fn: Callable[[DemoContext], tuple[dict, str]]  # -> (numbers for report.json, markdown for report.md)
    cost: float = 1.0  # wall seconds of the quick profile on a quiet machine, one thread: the scheduler's estimate
    after: tuple[str, ...] = ()  # stages that must end first when they run too (the policy studies need `dpo`)


_POLICY = ("dpo",)
STAGES = [
    Stage("capture", "Capture", stage_capture, 0.5),
    Stage("entropy", "Knowledge entropy", stage_entropy, 1),
    Stage("probes", "Concept-probe layer sweep", stage_probes, 6),
    Stage("steering", "Steering vector and multiplier sweep", stage_steering, 5),
    Stage("dpo", "DPO run and policy-shift report", stage_dpo, 32),
    Stage("sae", "Sparse autoencoder features, latent steering and portable steering", stage_sae, 14),
    Stage("introspection", "Introspection under concept injection", stage_introspection, 13, _POLICY),
    Stage("transfer", "Cross-model direction transfer", stage_transfer, 8, _POLICY),
    Stage("perturbation", "Latent-perturbation sensitivity", stage_perturbation, 28, _POLICY),
    Stage("trajectory", "Latent-trajectory signals", stage_trajectory, 18, _POLICY),
    Stage("latent_cot", "Latent chain-of-thought study", stage_latent_cot, 40),
]
