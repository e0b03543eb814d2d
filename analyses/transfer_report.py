"""Reporting for :mod:`analyses.transfer`: the rank / prompt-count plot, the markdown section, the
saved JSON + figure, and the demo section (``QUICK`` sizes)."""

from __future__ import annotations

from pathlib import Path


from hooked.jsonutil import write_json

from .transfer import TransferResult, run_transfer


def plot_transfer(res: TransferResult, path=None):
    from hooked.figures import new_figure

    fig, axes = new_figure(1, 3, figsize=(14, 3.8))
    ax = axes[0]
    names = ["native", "transferred", "random"]
    means = [res.native["mean"], res.transferred["mean"], res.random["mean"]]
    errs = [1.96 * res.native["se"], 1.96 * res.transferred["se"], res.random["sd"]]
    ax.bar(names, means, yerr=errs, capsize=4, color=["tab:blue", "tab:orange", "tab:gray"])
    ax.axhline(0, color="k", lw=0.6)
    ax.set(ylabel=f"slope of logit({res.positive!r})-logit({res.negative!r})", title="effect at the native norm")
    ranks = res.by_rank
    top = max([r["rank"] for r in ranks if r["rank"] != "full"] or [1])
    xs = [r["rank"] if r["rank"] != "full" else 2 * top for r in ranks]  # the full ridge map plotted at 2x the top rank
    ax = axes[1]
    ax.errorbar(xs, [r["slope"] for r in ranks], yerr=[1.96 * r["se"] for r in ranks], marker="o", label="slope")
    ax.axhline(res.native["mean"], color="tab:blue", ls="--", lw=0.8, label="native")
    ax.set(xscale="log", xlabel="rank of the map", ylabel="slope", title="effect vs rank")
    ax.set_xticks(xs, [str(r["rank"]) for r in ranks], minor=False)
    ax.set_xticks([], minor=True)
    ax2 = ax.twinx()
    ax2.plot(xs, [r["cosine_native"] for r in ranks], color="tab:green", marker="s", label="cos(transferred, native)")
    ax2.set_ylabel("cosine with native", color="tab:green")
    ax.legend(loc="upper left", fontsize=7)
    ax = axes[2]
    if res.by_n:
        ns = [b["n"] for b in res.by_n]
        ax.errorbar(ns, [b["slope"]["mean"] for b in res.by_n], yerr=[1.96 * b["slope"]["se"] for b in res.by_n],
                    marker="o", label="slope")
        ax.axhline(res.native["mean"], color="tab:blue", ls="--", lw=0.8)
        ax3 = ax.twinx()
        ax3.errorbar(ns, [b["cosine_native"]["mean"] for b in res.by_n],
                     yerr=[1.96 * b["cosine_native"]["se"] for b in res.by_n], color="tab:green", marker="s")
        ax3.set_ylabel("cosine with native", color="tab:green")
    ax.set(xscale="log", xlabel="paired prompts", ylabel="slope", title="effect vs paired prompts")
    if res.by_n:
        ax.set_xticks(ns, [str(n) for n in ns], minor=False)
        ax.set_xticks([], minor=True)
    fig.suptitle(f"{res.source} {res.source_site} -> {res.target} {res.target_site}", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def transfer_markdown(res: TransferResult, figure: str | None = None) -> str:
    def ci(d):
        return f"{d['mean']:.3f} (95% CI {d['ci95'][0]:.3f} to {d['ci95'][1]:.3f})"

    rows = "\n".join(f"| {r['rank']} | {r['slope']:.3f} ± {1.96 * r['se']:.3f} | {r['cosine_native']:.3f} | "
                     f"{r['norm_ratio']:.3f} | {r['r2_test']:.3f} | {r['r2_test_uniform']:.3f} |" for r in res.by_rank)
    nrows = "\n".join(f"| {b['n']} | {b['slope']['mean']:.3f} ± {1.96 * b['slope']['se']:.3f} | "
                      f"{b['cosine_native']['mean']:.3f} ± {1.96 * b['cosine_native']['se']:.3f} | "
                      f"{b['r2_test']['mean']:.3f} |" for b in res.by_n)
    fig = f"\n\n![transfer]({figure})" if figure else ""
    return (
        f"Map `{res.source}` `{res.source_site}` -> `{res.target}` `{res.target_site}` (layers by relative depth "
        f"{res.extra.get('depth')}), reduced-rank ridge fitted on {res.n_align} shared prompts (alpha "
        f"{res.alpha:.3g} by LOO-CV), scored on {res.n_test} held-out prompts. Effect = slope of "
        f"logit(`{res.positive}`)−logit(`{res.negative}`) against the multiplier ({res.multipliers}) on "
        f"{res.extra.get('n_eval_prompts')} prompts; every vector scaled to the native CAA vector's norm "
        f"({res.native['norm']:.2f}).\n\n"
        f"- native CAA vector: {ci(res.native)}\n- transferred: {ci(res.transferred)}; at its own norm "
        f"({res.transferred_own_norm['norm']:.2f}): {ci(res.transferred_own_norm)}\n"
        f"- random directions ({res.random['n_seeds']} seeds): mean {res.random['mean']:.3f}, sd {res.random['sd']:.3f}\n"
        f"- cosine(transferred, native) = {res.cosine_transferred_native:.3f}"
        + (f"; cosine(Source vector, native) = {res.cosine_source_native:.3f}" if res.cosine_source_native is not None else "")
        + f"\n\n| rank | slope ± 95% | cos(native) | norm ratio | held-out R² | held-out R² (mean over dims) |\n|---|---|---|---|---|---|\n{rows}\n\n"
        + (f"| paired prompts | slope ± 95% over subsets | cos(native) ± 95% over subsets | held-out R² |\n"
           f"|---|---|---|---|\n{nrows}" if nrows else "")  # no sweep over prompt counts: no empty table
        + fig
    )


def save_transfer(res: TransferResult, out_dir, name: str = "transfer") -> dict:
    """Write ``{name}.json``, ``{name}.png`` and ``{name}.md`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", res.to_dict())
    plot_transfer(res, out / f"{name}.png")
    (out / f"{name}.md").write_text(f"## Cross-model direction transfer\n\n{transfer_markdown(res, f'{name}.png')}\n")
    return {"json": out / f"{name}.json", "plot": out / f"{name}.png", "markdown": out / f"{name}.md"}


QUICK = dict(n_align=160, ranks=(1, 4, 16, 64, None), n_sweep=(20, 60), n_repeats=2, n_random=3,
             multipliers=(-4.0, 0.0, 4.0))


def demo_section(model, out_dir, quick: bool = True, target=None, policy=None,
                 pairs=None, **sizes) -> tuple[dict, str]:
    """``(numbers, markdown)`` for the demo: ``model`` -> ``target`` (``"cross_model"``; default target the
    packaged Gemma 3 270M), and ``model`` -> ``policy`` (``"to_policy"``: its DPO policy, a HookedModel or a
    saved dir) when one is given. ``pairs`` (default: both, the second only with a policy) chooses which run;
    ``"to_policy"`` needs ``policy``.
    ``sizes``: :func:`run_transfer` keywords overriding :data:`QUICK` / the defaults."""
    import hooked

    if pairs is None:
        pairs = ("cross_model",) + (("to_policy",) if policy is not None else ())
    unknown = sorted(set(pairs) - {"cross_model", "to_policy"})
    if unknown or not pairs:
        raise ValueError(f"pairs {list(pairs)}: choose from 'cross_model' and 'to_policy' (at least one).")
    out = Path(out_dir)
    kw = {**(QUICK if quick else {}), **sizes}
    runs, numbers, text = [], {}, []
    if "cross_model" in pairs:
        runs.append(("cross_model", target if target is not None else hooked.load_model("gemma-3-270m")))
    if "to_policy" in pairs:
        if policy is None:
            raise ValueError("pairs include 'to_policy' but no policy was given; pass policy= (a DPO policy) or "
                             "pairs=('cross_model',).")
        runs.append(("to_policy", policy if not isinstance(policy, (str, Path)) else hooked.load_model(str(policy))))
    for name, tgt in runs:
        res = run_transfer(model, tgt, **kw)
        save_transfer(res, out, f"transfer_{name}")
        numbers[name] = res.to_dict()
        text.append(f"### {res.source} -> {res.target}\n\n{transfer_markdown(res, f'transfer_{name}.png')}")
    return numbers, "\n\n".join(text)
