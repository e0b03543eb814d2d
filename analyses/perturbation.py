"""Latent-perturbation sensitivity: how far a perturbation of the residual stream moves a model off its
own response, layer by layer, and the activation steering attack (ASA) that follows from it.

Gu et al. 2025, "Probing the Robustness of Large Language Models Safety to Latent Perturbations",
arXiv 2506.16078; reference code Carol-gutianle/LatentSafety (``sv/loss.py``, ``sv/intervent.py``).

* **NLL probe** (Eq. 2): for a prompt ``x`` and the model's own greedy response ``y``,
  ``NLL(x, y) = -1/|y| sum_t log p(y_t | x, y_<t)`` with a perturbation ``delta`` added to ``resid_post.l``
  at every position whose next-token prediction scores ``y`` (the last prompt token through the
  second-to-last response token: ``modified[:, prompt_len - 1 : -1] += delta`` in ``sv/loss.py``).
  The sensitivity of layer ``l`` along a direction is ``dNLL = NLL_perturbed - NLL_clean``.
* **Perturbations of a given norm** along a unit direction ``u``: ``delta_i = rho * ||h_i^l|| * u`` with
  ``h_i^l`` the activation at the last prompt token of prompt ``i`` (``rho`` is relative, so layers with
  different residual norms are comparable). Directions: ``random`` (Gaussian, several seeds),
  ``probe`` (unit direction of a logistic probe for true/false statements, :mod:`probes.datasets`
  ``factual``) and ``steering`` (unit CAA sentiment vector, :func:`interventions.extract`), each per layer.
* **ASA normalisation** (Eq. 1): ``delta' = mu(h) + (g - mu(g)) / (sigma(g) + 1e-6) * sigma(h)`` with
  ``g ~ N(0, I)``, ``mu``/``sigma`` the mean and (unbiased) std over the ``d`` coordinates of one vector,
  and ``h`` the last-prompt-token activation (``normalize_delta_to_preserve_stats``).
* **ASA steps** (``generate_w_steer``, mode ``random``): (1) greedy original response; (2) at layer
  ``l``, ``delta'`` from the seeded Gaussian (the reference reseeds before every draw, so every layer
  gets the same ``g``; so does this module); (3) add ``delta'`` at the last position of every forward of
  greedy generation (the last prompt token, then each new token); (4) compare with the original. The
  paper scores (4) with an LLM safety judge: LASR_l = success rate at layer ``l``, MASR = fraction of
  prompts broken at some layer, PASR = max_l LASR_l. With no judge here, *success means the greedy
  response changed* (a deviation, named): the numbers say how often the perturbation changes the
  behaviour, not whether the change is harmful. The NLL probe at the same layers says which layers
  to attack; the report gives the rank correlation between the two.

Deviations from the reference, named: the NLL is averaged over response tokens only (``sv/loss.py``
passes ``labels=input_ids``, so prompt tokens, which the perturbation cannot change, dilute the mean);
``h`` is ``resid_post.l``, the tensor the perturbation is added to (the reference normalises with
``hidden_states[l]``, the *input* of block ``l``, and adds to its output); prompts are a preference
set's questions, not AdvBench.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from hooked.jsonutil import to_jsonable, write_json
from hooked.util import batch_slices, torch_threads

DIRECTIONS = ("random", "probe", "steering")


def asa_normalize(delta: torch.Tensor, reference: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 1 of arXiv 2506.16078, row by row: ``(delta - mean(delta)) / (std(delta) + eps) * std(ref) + mean(ref)``."""
    delta, reference = torch.as_tensor(delta).float(), torch.as_tensor(reference).float()
    if delta.shape != reference.shape:
        raise ValueError(f"delta {tuple(delta.shape)} and reference {tuple(reference.shape)} must have the same shape.")
    md, sd = delta.mean(-1, keepdim=True), delta.std(-1, keepdim=True)
    mr, sr = reference.mean(-1, keepdim=True), reference.std(-1, keepdim=True)
    return (delta - md) / (sd + eps) * sr + mr


# ---------------------------------------------------------------------------------------------- responses
@dataclass
class Responses:
    """Each prompt's real token ids and the model's own greedy response ids (EOS included if produced)."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string; wrap it: [prompt].")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("No prompts given; pass a non-empty list of prompts whose responses are perturbed.")
    return prompts


def greedy_responses(model, prompts, max_new_tokens: int = 16) -> Responses:
    prompts = _check_prompts(prompts)
    enc = model.tokenize(prompts)
    ids = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"].cpu(), enc["attention_mask"].cpu())]
    resp = model.generate_ids(prompts, max_new_tokens=max_new_tokens, do_sample=False)
    for i, r in enumerate(resp):
        if not r:
            raise RuntimeError(f"The model generated nothing for prompts[{i}] ({prompts[i]!r}).")
    return Responses(prompts, ids, [list(r) for r in resp])


def _window_hook(delta: torch.Tensor, first: torch.Tensor, last: torch.Tensor | None):
    """Add ``delta[b]`` at real positions ``first[b] <= p`` (``<= last[b]`` when given) of each row."""

    def hook(act, ctx):
        pos = ctx.positions.to(act.device)
        sel = pos >= first.to(act.device)[:, None]
        if last is not None:
            sel &= pos <= last.to(act.device)[:, None]
        if not bool(sel.any()):
            return None
        return act + sel[..., None].to(act.dtype) * delta.to(act.device, act.dtype)[:, None, :]

    return hook


@torch.no_grad()
def response_nll(model, responses: Responses, layer: int | None = None, delta: torch.Tensor | None = None,
                 batch_size: int = 8) -> torch.Tensor:
    """Mean NLL per response token of each prompt's response, ``[N]`` (float64); with ``delta`` ``[N, d]``
    added to ``resid_post.{layer}`` at the positions that predict the response (see the module docstring)."""
    n = len(responses.prompts)
    if delta is not None:
        if layer is None:
            raise ValueError("A perturbation needs the layer it is added at (layer=...).")
        width = model.site_shape(f"resid_post.{layer}")[0]
        if tuple(delta.shape) != (n, width):
            raise ValueError(f"The perturbation must be [n_prompts, d_model] = [{n}, {width}] for this model; got "
                             f"{tuple(delta.shape)} (a vector from a model of another width?).")
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    out = []
    for sl in batch_slices(n, batch_size):
        rows = [p + r for p, r in zip(responses.prompt_ids[sl], responses.response_ids[sl])]
        plen = torch.tensor([len(p) for p in responses.prompt_ids[sl]])
        tot = torch.tensor([len(r) for r in rows])
        T = int(tot.max())
        ids = torch.full((len(rows), T), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, T - len(r):] = torch.tensor(r)
            mask[i, T - len(r):] = 1
        if delta is None:
            logits = model.forward(ids, mask)
        else:
            with model.hooks({f"resid_post.{layer}": _window_hook(delta[sl], plen - 1, tot - 2)}):
                logits = model.forward(ids, mask)
        logp = logits.float().log_softmax(-1).cpu()
        for i in range(len(rows)):
            off = T - int(tot[i])
            start, stop = off + int(plen[i]) - 1, off + int(tot[i]) - 1  # slots predicting the response tokens
            target = ids[i, start + 1: stop + 1]
            out.append(-logp[i, start:stop].gather(-1, target[:, None]).double().mean())
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------- directions
def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def layer_directions(model, layers: Sequence[int], kinds: Sequence[str] = ("probe", "steering"), probe_n: int = 160,
                     seed: int = 0) -> dict[str, torch.Tensor]:
    """Unit directions ``[len(layers), d]`` per kind: ``probe`` (logistic probe on true/false statements)
    and ``steering`` (CAA sentiment vector)."""
    import interventions as iv
    import probes

    sites = [f"resid_post.{l}" for l in layers]
    out = {}
    if "steering" in kinds:
        vec = iv.extract(model, iv.data.sentiment_pairs(), sites, method="mean_diff")
        out["steering"] = _unit_rows(torch.stack([vec[s] for s in sites]))
    if "probe" in kinds:
        ds = probes.datasets.load("factual", n=probe_n, seed=seed)
        acts = model.capture(list(ds.texts), sites, positions="last", progress=False)
        y = torch.as_tensor(ds.labels)
        out["probe"] = _unit_rows(torch.stack([torch.as_tensor(probes.LinearProbe().fit(acts[s], y).direction_).float()
                                               for s in sites]))
    return out


def last_prompt_acts(model, responses: Responses, layers: Sequence[int]) -> torch.Tensor:
    """``h_i^l`` at the last prompt token, ``[len(layers), N, d]``."""
    sites = [f"resid_post.{l}" for l in layers]
    acts = model.capture(responses.prompts, sites, positions="last", progress=False)
    return torch.stack([acts[s].float() for s in sites])


# ---------------------------------------------------------------------------------------------- the profile
@dataclass
class SensitivityProfile:
    """dNLL of each model's own response per layer, direction and relative norm, and the ASA steps."""

    model: str
    layers: list[int]
    norms: list[float]
    n_prompts: int
    base_nll: list[float]
    delta_nll: dict  # direction -> str(norm) -> [layers][prompts]
    asa_delta_nll: list[list[float]]  # [layers][prompts]
    asa: dict  # lasr per layer, masr, pasr, spearman with the NLL probe, examples
    n_random: int
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def summary(self, values) -> dict:
        t = torch.as_tensor(values, dtype=torch.float64)
        n = t.shape[-1]
        return {"mean": t.mean(-1).tolist(), "se": (t.std(-1) / n ** 0.5).tolist() if n > 1 else [float("nan")] * len(t)}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = {k: {nrm: self.summary(v) for nrm, v in by.items()} for k, by in self.delta_nll.items()}
        d["summary"]["asa"] = self.summary(self.asa_delta_nll)
        return to_jsonable(d)


@torch.no_grad()
def asa_attack(model, responses: Responses, layer: int, delta: torch.Tensor, max_new_tokens: int | None = None) -> dict:
    """Step (3)-(4) of ASA at one layer: greedy generation with ``delta[i]`` added at the last position of
    every forward; returns the steered ids and whether each response changed."""
    first = torch.tensor([len(p) - 1 for p in responses.prompt_ids])
    steps = max_new_tokens or max(len(r) for r in responses.response_ids)
    with model.hooks({f"resid_post.{layer}": _window_hook(delta, first, None)}):
        steered = model.generate_ids(responses.prompts, max_new_tokens=steps, do_sample=False)
    changed = [list(s[:len(o)]) != list(o) for s, o in zip(steered, responses.response_ids)]
    return {"steered_ids": [list(s) for s in steered], "changed": changed}


def sensitivity_profile(model, prompts, layers: Sequence[int] | None = None, norms: Sequence[float] = (0.5,),
                        directions: Sequence[str] = DIRECTIONS, n_random: int = 3, max_new_tokens: int = 16,
                        seed: int = 0, asa: bool = True, batch_size: int = 8, threads: int | None = 1,
                        progress: bool = False, probe_n: int = 160) -> SensitivityProfile:
    """The NLL probe at each layer along ``directions`` at relative ``norms`` and with the ASA perturbation,
    then the ASA generations (``asa=True``). ``threads``: torch threads while it runs (restored after);
    ``probe_n``: true/false statements the ``probe`` direction is fitted on (:func:`layer_directions`)."""
    with torch_threads(threads):
        return _profile(model, prompts, layers, norms, directions, n_random, max_new_tokens, seed, asa, batch_size,
                        progress, probe_n)


def _profile(model, prompts, layers, norms, directions, n_random, max_new_tokens, seed, asa, batch_size, progress,
             probe_n):
    from scipy.stats import spearmanr
    from tqdm.auto import tqdm

    t0 = time.time()
    prompts = _check_prompts(prompts)
    layers = list(range(model.n_layers)) if layers is None else [int(l) for l in layers]
    bad = [l for l in layers if not 0 <= l < model.n_layers]
    if bad or not layers:
        raise ValueError(f"layers {bad or layers} are out of range: this model has {model.n_layers} layers "
                         f"(0-{model.n_layers - 1}).")
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown:
        raise ValueError(f"Unknown direction kind(s) {unknown}; choose from {list(DIRECTIONS)}.")
    norms = [float(x) for x in norms]
    if any(x < 0 for x in norms):
        raise ValueError(f"norms are relative perturbation norms (fractions of ||h||) and must be >= 0; got {norms}.")
    if "random" in directions and n_random < 1:
        raise ValueError("n_random must be >= 1 when 'random' is among the directions.")

    resp = greedy_responses(model, prompts, max_new_tokens)
    base = response_nll(model, resp, batch_size=batch_size)
    H = last_prompt_acts(model, resp, layers)  # [L, N, d]
    hnorm = H.norm(dim=-1, keepdim=True)  # [L, N, 1]
    fixed = layer_directions(model, layers, [d for d in directions if d != "random"], probe_n=probe_n, seed=seed)
    d_model = H.shape[-1]
    delta_nll = {d: {str(x): [] for x in norms} for d in directions}
    asa_nll, lasr, changed_any, examples = [], [], torch.zeros(len(prompts), dtype=torch.bool), {}
    bar = tqdm(layers, desc=f"perturb {getattr(model, 'name', '')}", disable=not progress)
    for li, layer in enumerate(bar):
        for kind in directions:
            for rho in norms:
                if kind == "random":
                    per_seed = []
                    for k in range(n_random):
                        g = torch.Generator().manual_seed(seed + 7919 * k + layer)
                        u = _unit_rows(torch.randn(len(prompts), d_model, generator=g))
                        per_seed.append(response_nll(model, resp, layer, rho * hnorm[li] * u, batch_size) - base)
                    vals = torch.stack(per_seed).mean(0)
                else:
                    u = fixed[kind][li].expand(len(prompts), d_model)
                    vals = response_nll(model, resp, layer, rho * hnorm[li] * u, batch_size) - base
                delta_nll[kind][str(rho)].append(vals.tolist())
        # ASA: the reference reseeds before drawing, so g is the same at every layer
        g = torch.randn(len(prompts), d_model, generator=torch.Generator().manual_seed(seed))
        d_asa = asa_normalize(g, H[li])
        asa_nll.append((response_nll(model, resp, layer, d_asa, batch_size) - base).tolist())
        if asa:
            att = asa_attack(model, resp, layer, d_asa)
            ch = torch.tensor(att["changed"])
            lasr.append(float(ch.float().mean()))
            changed_any |= ch
            examples[str(layer)] = model.tokenizer.decode(att["steered_ids"][0], skip_special_tokens=True)
    asa_mean = torch.tensor(asa_nll, dtype=torch.float64).mean(1)
    asa_info = {"success": "greedy response changed (no safety judge; see module docstring)"}
    if asa:
        rho_s = float(spearmanr(asa_mean.tolist(), lasr).statistic) if len(layers) > 2 and len(set(lasr)) > 1 else None
        peak = max(range(len(layers)), key=lambda i: lasr[i])
        asa_info.update({"lasr": lasr, "masr": float(changed_any.float().mean()), "pasr": lasr[peak],
                         "peak_layer": layers[peak], "spearman_nll_vs_lasr": rho_s,
                         "most_sensitive_layer_by_nll": layers[int(asa_mean.argmax())],
                         "original_example": model.tokenizer.decode(resp.response_ids[0], skip_special_tokens=True),
                         "steered_examples": examples})
    return SensitivityProfile(
        model=str(getattr(model, "name", "model")), layers=layers, norms=norms, n_prompts=len(prompts),
        base_nll=base.tolist(), delta_nll=delta_nll, asa_delta_nll=asa_nll, asa=asa_info, n_random=n_random,
        seconds=round(time.time() - t0, 1),
        extra={"max_new_tokens": max_new_tokens, "probe_n": probe_n,
               "mean_response_tokens": sum(map(len, resp.response_ids)) / len(prompts),
               "relative_asa_norm": (torch.stack([asa_normalize(torch.randn(len(prompts), d_model,
                                     generator=torch.Generator().manual_seed(seed)), H[i]) for i in range(len(layers))])
                                     .norm(dim=-1) / hnorm.squeeze(-1)).mean(1).tolist()},
    )


# ---------------------------------------------------------------------------------------------- base vs policy
def compare(base_profile: SensitivityProfile, policy_profile: SensitivityProfile) -> dict:
    """Per-layer difference of mean dNLL (policy - base) with a paired standard error over prompts."""
    a, b = base_profile, policy_profile
    if a.layers != b.layers or a.n_prompts != b.n_prompts or a.norms != b.norms:
        raise ValueError(f"Profiles are not comparable: layers {a.layers} vs {b.layers}, prompts {a.n_prompts} vs "
                         f"{b.n_prompts}, norms {a.norms} vs {b.norms}; run both with the same settings.")
    out = {}
    pairs = [(f"{k}@{n}", a.delta_nll[k][n], b.delta_nll[k][n]) for k in a.delta_nll for n in a.delta_nll[k]]
    pairs.append(("asa", a.asa_delta_nll, b.asa_delta_nll))
    for name, x, y in pairs:
        d = torch.as_tensor(y, dtype=torch.float64) - torch.as_tensor(x, dtype=torch.float64)
        n = d.shape[-1]
        out[name] = {"mean": d.mean(-1).tolist(), "se": (d.std(-1) / n ** 0.5).tolist() if n > 1 else None}
    return out


def plot_profiles(profiles: dict, path=None):
    """One panel per model: mean dNLL per layer (bands: ±1.96 SE over prompts) per direction, and LASR."""
    from hooked.figures import new_figure

    fig, axes = new_figure(1, len(profiles), figsize=(6.5 * len(profiles), 3.8), squeeze=False)
    for ax, (label, p) in zip(axes[0], profiles.items()):
        for kind, by in p.delta_nll.items():
            for nrm, vals in by.items():
                s = p.summary(vals)
                m, se = torch.tensor(s["mean"]), torch.tensor(s["se"])
                ax.plot(p.layers, m, marker=".", label=f"{kind} (rho={nrm})")
                ax.fill_between(p.layers, m - 1.96 * se, m + 1.96 * se, alpha=0.2)
        s = p.summary(p.asa_delta_nll)
        m, se = torch.tensor(s["mean"]), torch.tensor(s["se"])
        ax.plot(p.layers, m, marker="o", color="k", label="ASA (Eq. 1)")
        ax.fill_between(p.layers, m - 1.96 * se, m + 1.96 * se, color="k", alpha=0.15)
        ax.set(xlabel="layer", ylabel="dNLL of own response (nats/token)", title=f"{label}: {p.model}")
        if p.asa.get("lasr") is not None:
            ax2 = ax.twinx()
            ax2.plot(p.layers, p.asa["lasr"], color="tab:red", ls="--", label="ASA: response changed")
            ax2.set_ylim(-0.02, 1.02)
            ax2.set_ylabel("fraction of responses changed (ASA)", color="tab:red")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def perturb_markdown(profiles: dict, diff: dict | None = None, figure: str | None = None) -> str:
    lines = []
    for label, p in profiles.items():
        asa_m = p.summary(p.asa_delta_nll)["mean"]
        top = sorted(range(len(p.layers)), key=lambda i: -asa_m[i])[:3]
        base = torch.tensor(p.base_nll)
        lines.append(
            f"**{label}** (`{p.model}`, {p.n_prompts} prompts, own greedy responses of "
            f"{p.extra['mean_response_tokens']:.1f} tokens on average, clean NLL {float(base.mean()):.3f} ± "
            f"{float(1.96 * base.std() / len(base) ** 0.5):.3f} nats/token). Most sensitive layers to the ASA perturbation "
            f"(mean dNLL): " + ", ".join(f"{p.layers[i]} ({asa_m[i]:.3f})" for i in top) + ".")
        for kind, by in p.delta_nll.items():
            for nrm, vals in by.items():
                s = p.summary(vals)
                i = max(range(len(p.layers)), key=lambda j: s["mean"][j])
                lines.append(f"  - {kind}, relative norm {nrm}: peak dNLL {s['mean'][i]:.3f} ± {1.96 * s['se'][i]:.3f} "
                             f"at layer {p.layers[i]}; mean over layers {sum(s['mean']) / len(s['mean']):.3f}")
        a = p.asa
        if a.get("lasr") is not None:
            sp = a["spearman_nll_vs_lasr"]
            lines.append(f"  - ASA (response changed = success, no judge): MASR {a['masr']:.2f}, PASR {a['pasr']:.2f} at "
                         f"layer {a['peak_layer']}; Spearman(dNLL, LASR) over layers = "
                         f"{'n/a' if sp is None else f'{sp:.2f}'}")
    if diff:
        for name, d in diff.items():
            m = torch.tensor(d["mean"])
            se = torch.tensor(d["se"]) if d["se"] is not None else torch.zeros_like(m)
            sig = int(((m - 1.96 * se) > 0).sum() + ((m + 1.96 * se) < 0).sum())
            lines.append(f"- policy − base, {name}: mean over layers {float(m.mean()):+.3f}; layers whose 95% interval "
                         f"excludes 0: {sig} of {len(m)}")
    fig = f"\n\n![perturbation]({figure})" if figure else ""
    return "\n".join(lines) + fig


def save_perturb(profiles: dict, out_dir, name: str = "perturb") -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    diff = compare(*profiles.values()) if len(profiles) == 2 else None
    numbers = {k: p.to_dict() for k, p in profiles.items()}
    if diff is not None:
        numbers["policy_minus_base"] = diff
    write_json(out / f"{name}.json", numbers)
    plot_profiles(profiles, out / f"{name}.png")
    md = perturb_markdown(profiles, diff, f"{name}.png")
    (out / f"{name}.md").write_text(f"## Latent-perturbation sensitivity\n\n{md}\n")
    return {"numbers": numbers, "markdown": md}


QUICK = dict(n_random=2, max_new_tokens=12)


def default_prompts(model, n: int, chat: bool = True) -> list[str]:
    """The questions of the ``knowledge`` preference set (what ``analyses.dpo`` trains on), rendered as a user
    turn with the model's chat template when ``chat`` (an instruct model answers a bare question with EOS)."""
    from analyses import dpo

    prefs = dpo.get_preferences("knowledge")
    if chat:
        prefs = prefs.render_chat(model.tokenizer)
    return prefs.prompts[:n]


def demo_section(model, out_dir, quick: bool = True, policy=None, prompts=None, chat: bool = True,
                 layers=None, **sizes) -> tuple[dict, str]:
    """``(numbers, markdown)`` for the demo: the profile of ``model`` and, when ``policy`` (a HookedModel or a
    saved DPO policy dir) is given, of the policy, with their per-layer difference. Prompts default to
    :func:`default_prompts`. ``sizes``: :func:`sensitivity_profile` keywords (``n_random``, ``max_new_tokens``,
    ``threads``, ...) overriding :data:`QUICK` / the defaults."""
    import hooked

    prompts = list(prompts) if prompts is not None else default_prompts(model, 6 if quick else 16, chat)
    if layers is None:
        step = 3 if quick else 1
        layers = sorted(set(range(0, model.n_layers, step)) | {model.n_layers - 1})
    kw = {**(QUICK if quick else {}), **sizes}
    profiles = {"base": sensitivity_profile(model, prompts, layers=layers, **kw)}
    if policy is not None:
        pol = policy if not isinstance(policy, (str, Path)) else hooked.load_model(str(policy))
        profiles["dpo"] = sensitivity_profile(pol, prompts, layers=layers, **kw)
    res = save_perturb(profiles, out_dir)
    return res["numbers"], res["markdown"]
