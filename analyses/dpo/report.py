"""``run_shift_report``: every policy-shift and per-layer measure of a (reference, policy) pair, written as
``report.md``, ``report.json`` (every number) and PNG plots."""
from __future__ import annotations

import math
import time
from pathlib import Path

from hooked.jsonutil import write_json

from . import _common as C
from . import causal, did as D, internals, policy as P
from .preferences import get as get_preferences

LIMITS = {
    "n_pairs": 16,          # preference pairs scored and patched
    "n_prompts": 16,        # prompts for KL / DID sampling and the per-layer internals
    "k_samples": 4,         # samples of the policy per prompt for KL(pi || pi_ref)
    "did_k": 128,           # draws per prompt for the DID entropy estimator (analyses.dpo.did)
    "max_new_tokens": 24,   # sample length
    "beta": 0.1,            # DPO beta for the implicit reward
    "batch_size": 8,
    "layers": None,         # layers for patching / steering (None: all)
    "probe_datasets": ("factual",),
    "probe_n": 160,
    "geometry_n": internals.GEOMETRY_N,  # texts for RankMe / alpha-ReQ (last token each; > 100 for the window)
    "sink_tokens": internals.SINK_TOKENS,  # leading tokens per text left out of all-token similarity
    "chat": False,          # render prompts with the chat template (must match training)
    "seed": 0,
}


def _checkpoint_logprobs(checkpoints, reference, prefs, batch_size):
    """(labels, pair log-probs) of each checkpoint: a TrainResult, or a list of model dirs / models.
    Directories are loaded one at a time as plain transformers models and released after scoring."""
    from transformers import AutoModelForCausalLM

    if checkpoints is None:
        return [], []
    if hasattr(checkpoints, "checkpoint_dirs"):
        items = list(zip(checkpoints.steps, checkpoints.checkpoint_dirs))
    else:
        items = [(Path(c).name if isinstance(c, (str, Path)) else f"checkpoint {i}", c)
                 for i, c in enumerate(checkpoints)]
    labels, lps = [], []
    for label, c in items:
        if isinstance(c, (str, Path)):
            if not (Path(c) / "config.json").exists():
                raise ValueError(f"Checkpoint {str(c)!r} is not a saved model directory (no config.json); pass "
                                 f"the directories written by dpo.train or a TrainResult.")
            c = AutoModelForCausalLM.from_pretrained(str(c), dtype=reference.dtype).to(reference.device).eval()
        labels.append(label)
        lps.append(P.pair_logprobs(c, prefs, batch_size, tokenizer=reference.tokenizer))
        del c
    return labels, lps


def run_shift_report(reference, policy, preferences, out_dir, checkpoints=None, progress=True, **limits) -> dict:
    """Measure how ``policy`` moved away from ``reference`` and where inside the model the move lives.

    ``reference`` / ``policy``: ``hooked.HookedModel`` or anything ``hooked.load_model`` accepts, of one
    architecture and vocabulary. ``preferences``: a built-in name ('knowledge', 'style'), a JSONL path, a
    list of dicts or a PreferenceSet. ``checkpoints``: a ``TrainResult`` or a list of intermediate model
    dirs, for displacement over training (the policy is the last point). ``limits`` (defaults in
    ``LIMITS``): n_pairs, n_prompts, k_samples, did_k, max_new_tokens, beta, batch_size, layers,
    probe_datasets, probe_n, geometry_n, sink_tokens, chat, seed. Writes report.md, report.json and PNGs into ``out_dir``; returns the numbers."""
    unknown = sorted(set(limits) - set(LIMITS))
    if unknown:
        raise TypeError(f"run_shift_report got unknown limits {unknown}; valid ones are {sorted(LIMITS)}.")
    lim = {**LIMITS, **limits}
    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stages = ["load", "rewards", "displacement", "samples", "did", "internals", "localisation", "write"]
    bar = _Stages(stages, progress)
    ref, pol = C.resolve(reference), C.resolve(policy)
    C.check_pair(ref, pol)
    prefs = get_preferences(preferences, n=lim["n_pairs"], seed=lim["seed"])
    if lim["chat"]:
        prefs = prefs.render_chat(ref.tokenizer)
    bs = lim["batch_size"]
    bar.next()

    lp_ref, lp_pol = P.pair_logprobs(ref, prefs, bs), P.pair_logprobs(pol, prefs, bs)
    label = lambda spec, model: str(spec) if isinstance(spec, (str, Path)) else model.name  # noqa: E731
    result = {"reference": label(reference, ref), "policy": label(policy, pol), "arch": ref.arch,
              "n_layers": ref.n_layers,
              "preferences": {"name": prefs.name, "entropy": prefs.entropy, "n_pairs": len(prefs),
                              "chat": bool(lim["chat"])},
              "limits": {k: (list(v) if isinstance(v, tuple) else v) for k, v in lim.items()},
              "logps": {"reference_chosen": lp_ref["chosen"].mean().item(),
                        "reference_rejected": lp_ref["rejected"].mean().item(),
                        "policy_chosen": lp_pol["chosen"].mean().item(),
                        "policy_rejected": lp_pol["rejected"].mean().item()},
              "reward": P.implicit_reward(lp_pol, lp_ref, lim["beta"])}
    bar.next()

    labels, lps = _checkpoint_logprobs(checkpoints, ref, prefs, bs)
    result["displacement"] = P.displacement(lp_ref, [lp_ref] + lps + [lp_pol], ["reference"] + labels + ["policy"])
    if hasattr(checkpoints, "log"):
        result["train_log"] = checkpoints.log
    bar.next()

    prompts = list(dict.fromkeys(prefs.prompts))[: lim["n_prompts"]]
    result["samples"] = P.policy_samples(ref, pol, prompts, k=lim["k_samples"],
                                         max_new_tokens=lim["max_new_tokens"], seed=lim["seed"], batch_size=bs)
    bar.next()
    result["did"] = D.did_entropy(ref, pol, prompts, k=lim["did_k"], max_new_tokens=lim["max_new_tokens"],
                                  seed=lim["seed"]).to_dict()
    bar.next()
    chosen_texts = [p + c for p, c in zip(prefs.prompts, prefs.chosen)]
    geo_texts = internals.geometry_texts(lim["geometry_n"], chosen_texts + [p + r for p, r in
                                                                          zip(prefs.prompts, prefs.rejected)],
                                         seed=lim["seed"])
    result["internals"] = internals.per_layer_internals(
        ref, pol, prompts, texts=chosen_texts, geometry_texts=geo_texts, probe_datasets=lim["probe_datasets"],
        probe_n=lim["probe_n"], batch_size=bs, seed=lim["seed"], sink_tokens=lim["sink_tokens"])
    bar.next()
    result["localisation"] = causal.localise(ref, pol, prefs, layers=lim["layers"], batch_size=bs)
    bar.next()
    result["seconds"] = round(time.time() - t0, 1)
    from .plots import write_plots
    result["plots"] = write_plots(result, out)
    write_json(out / "report.json", result, indent=1)
    (out / "report.md").write_text(markdown(result))
    bar.next()
    bar.close()
    return result


class _Stages:
    def __init__(self, names, progress):
        from tqdm.auto import tqdm

        self.names, self.i = names, 0
        self.bar = tqdm(total=len(names), disable=not progress, desc="dpo-shift")
        self.bar.set_postfix_str(names[0])

    def next(self):
        self.i += 1
        self.bar.update(1)
        if self.i < len(self.names):
            self.bar.set_postfix_str(self.names[self.i])

    def close(self):
        self.bar.close()


def _f(x, nd=3):
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _did_row(did: dict) -> str:
    """The DID entropy line: the estimate and its interval, or that it was refused."""
    st = did["settings"]
    head = (f"DID entropy (Won et al., arXiv 2505.23761; K={did['k']} draws per prompt, ESS min "
            f"{_f(did['ess_min'], 1)}) | ")
    if not did["reliable"]:
        return head + "not reported (diagnostics: see below)"
    lo, hi = did["interval"]
    return head + f"{_f(did['entropy'], 3)} nats ({st['level']:.0%} interval {_f(lo, 3)} to {_f(hi, 3)})"


def _argmax(xs):
    vals = [(v, i) for i, v in enumerate(xs) if v is not None and not math.isnan(v)]
    return max(vals)[1] if vals else None


def markdown(r: dict) -> str:
    rw, d, s, loc = r["reward"], r["displacement"], r["samples"], r["localisation"]
    it = r["internals"]
    lines = [f"# DPO policy shift: `{r['policy']}` vs `{r['reference']}`", "",
             f"Preferences: **{r['preferences']['name']}** ({r['preferences']['entropy']} entropy, "
             f"{r['preferences']['n_pairs']} pairs, chat template: {r['preferences']['chat']}). "
             f"Architecture {r['arch']}, {r['n_layers']} layers. Took {r['seconds']} s.", "",
             "## Policy shift", "",
             "| measure | value |", "| --- | --- |",
             f"| implicit reward, chosen (beta={rw['beta']}) | {_f(rw['reward_chosen'], 4)} |",
             f"| implicit reward, rejected | {_f(rw['reward_rejected'], 4)} |",
             f"| reward margin | {_f(rw['margin'], 4)} |",
             f"| reward accuracy | {_f(rw['accuracy'], 3)} |",
             f"| delta log pi(chosen), policy - reference | {_f(d['chosen'][-1], 4)} |",
             f"| delta log pi(rejected) | {_f(d['rejected'][-1], 4)} |",
             f"| KL(pi ‖ pi_ref), per sequence (± s.e.) | {_f(s['kl']['kl'], 4)} ± {_f(s['kl']['kl_stderr'], 4)} |",
             f"| KL per token | {_f(s['kl'].get('kl_per_token'), 5)} |",
             f"| {_did_row(r['did'])} |", ""]
    if not r["did"]["reliable"]:
        lines += [f"DID entropy not reported: {r['did']['reason']}", ""]
    chosen_dir = "rose" if d["chosen"][-1] > 0 else "fell"
    lines += [f"The chosen log-likelihood **{chosen_dir}** ({_f(d['chosen'][-1], 4)} nats per sequence) and the "
              f"rejected moved by {_f(d['rejected'][-1], 4)}.", "",
              "Displacement over checkpoints:", "", "| model | Δ log pi(chosen) | Δ log pi(rejected) |",
              "| --- | --- | --- |"]
    lines += [f"| {lab} | {_f(c, 4)} | {_f(rj, 4)} |" for lab, c, rj in zip(d["labels"], d["chosen"], d["rejected"])]
    rep, lens, ke, geo = it["representation"], it["lens"], it["knowledge_entropy"], it["geometry"]
    lines += ["", "## Where the shift lives (per layer)", "",
              f"- Representation: lowest CKA {_f(min(rep['cka']), 4)} at layer {rep['cka'].index(min(rep['cka']))}; "
              f"largest relative change {_f(max(rep['relative_change']), 4)} at layer "
              f"{rep['relative_change'].index(max(rep['relative_change']))}.",
              f"- Logit-lens KL(pi‖ref): final {_f(lens['kl'][-1], 5)}, largest {_f(max(lens['kl']), 5)} at layer "
              f"{lens['kl'].index(max(lens['kl']))}.",
              f"- Knowledge entropy total: reference {_f(ke['reference_total'], 3)}, policy {_f(ke['policy_total'], 3)}.",
              f"- Similarity rows: {rep['n_rows']} tokens ({rep['positions']}: attention sinks left out).",
              f"- Geometry on the {geo['rows']} ({geo['n_rows']} texts). RankMe (covariance, last layer): reference "
              f"{_f(geo['rankme_reference'][-1], 2)}, policy {_f(geo['rankme_policy'][-1], 2)}; lowest over layers "
              f"{_f(min(geo['rankme_reference']), 2)} vs {_f(min(geo['rankme_policy']), 2)}."]
    if geo["alpha_req_unavailable"]:
        lines.append(f"- alpha-ReQ not available: {geo['alpha_req_unavailable']}")
    else:
        lines.append(f"- alpha-ReQ (ranks {geo['alpha_req_ranks'][0]}-{geo['alpha_req_ranks'][1]}, weights 1/rank, "
                     f"last layer): reference {_f(geo['alpha_req_reference'][-1], 3)}, policy "
                     f"{_f(geo['alpha_req_policy'][-1], 3)}.")
    for name, pt in it.get("probe_transfer", {}).items():
        best = _argmax(pt["ref_on_ref"])
        lines.append(f"- Probe transfer ({name}): at the reference's best layer {best}, reference probe "
                     f"{_f(pt['ref_on_ref'][best])} on reference vs {_f(pt['ref_on_policy'][best])} on policy; "
                     f"direction cosine {_f(pt['cosine'][best], 4)} (min over layers {_f(min(pt['cosine']), 4)}).")
    fw = loc["patch_policy_into_reference"]
    lines += ["", f"### Causal localisation (`resid_post.L` patching, {loc['n_pairs']} pairs)", "",
              f"Preference log-odds M: reference {_f(loc['M_reference'], 4)}, policy {_f(loc['M_policy'], 4)} "
              f"(shift {_f(loc['M_shift'], 4)}). Head share (not recovered by the last residual): "
              f"{_f(loc['head_share'])}. Steering: best layer {loc.get('steering_best_layer')} recovers "
              f"{_f(loc.get('steering_best_fraction'))}.", "",
              "| layer | policy→ref recovered | ref→policy removed | steering recovered |", "| --- | --- | --- | --- |"]
    st = loc.get("steering_recovered", [float("nan")] * len(fw))
    lines += [f"| {l} | {_f(a)} | {_f(b)} | {_f(c)} |"
              for l, a, b, c in zip(loc["layers"], fw, loc["patch_reference_into_policy"], st)]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in r.get("plots", [])] + [""]
    return "\n".join(lines)
