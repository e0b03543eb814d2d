"""``policylens`` subcommands for the measurement and intervention jobs."""

from __future__ import annotations

import json
from pathlib import Path


def add_subcommands(sub, common, load, write_json, CLIError) -> None:
    # ------------------------------------------------------------ entropy
    def cmd_entropy(args):
        import probes

        model = load(args)
        texts = [ln.strip() for ln in Path(args.texts).read_text().splitlines() if ln.strip()] if args.texts else None
        if texts is None:
            from analyses.demo_stages import ENTROPY_TEXTS

            texts = ENTROPY_TEXTS
        ke = probes.knowledge_entropy(model, texts, batch_size=args.batch_size, progress=True)
        out = Path(args.out)
        write_json(out / "knowledge_entropy.json", {"model": model.name, "n_texts": len(texts), "total": float(ke.total),
                                                    "per_layer": [float(x) for x in ke.per_layer]})
        print(f"knowledge entropy {float(ke.total):.4f} nats (sum of {model.n_layers} layers) -> {out}")
        return 0

    p = sub.add_parser("entropy", help="knowledge entropy per layer (Kim et al. 2024)")
    common(p, out_default="runs/entropy")
    p.add_argument("--texts", help="a .txt file with one text per line (default: built-in texts)")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(func=cmd_entropy)

    # ------------------------------------------------------------ probe
    def cmd_probe(args):
        import probes

        model = load(args)
        out = Path(args.out)
        sweeps = {}
        for name in args.datasets:
            ds = probes.datasets.from_csv(name) if name.endswith(".csv") else probes.datasets.load(name, n=args.n)
            sweeps[ds.name] = probes.layer_sweep(model, ds, sites=args.sites, positions=args.positions, cv=args.cv,
                                                 method=args.method, progress=True)
        probes.plot_depth(sweeps, path=out / "concept_depth.png")
        write_json(out / "sweeps.json", {k: v.to_dict() for k, v in sweeps.items()})
        for k, v in sweeps.items():
            print(f"{k:12} peak acc {v.peak_acc:.3f} at layer {v.peak_layer}; jump {v.jump_layer}; converging {v.converging_layer}")
        print(f"-> {out}")
        return 0

    p = sub.add_parser("probe", help="layer-wise concept probe sweep with depth markers")
    common(p, out_default="runs/probe")
    p.add_argument("--datasets", nargs="+", default=["factual"], help="built-in names (factual, emotional, inferential, "
                   "comparison) or CSV files with text,label[,group]")
    p.add_argument("--n", type=int, default=None, help="examples per built-in dataset")
    p.add_argument("--sites", default="resid_post.*")
    p.add_argument("--positions", default="last")
    p.add_argument("--cv", type=int, default=5)
    p.add_argument("--method", default="logistic", choices=["logistic", "mass_mean", "lda"])
    p.set_defaults(func=cmd_probe)

    # ------------------------------------------------------------ steer
    def cmd_steer(args):
        import interventions as iv

        model = load(args)
        out = Path(args.out)
        if args.action == "extract":
            pairs = iv.data.sentiment_pairs() if args.pairs is None else [
                (r["positive"], r["negative"]) for r in map(json.loads, Path(args.pairs).read_text().splitlines()) if r]
            vec = iv.extract(model, pairs, args.site, method=args.method)
            path = vec.save(out / "vector")
            print(f"steering vector for {vec.sites if hasattr(vec, 'sites') else args.site} -> {path}")
            return 0
        if not args.vector:
            raise CLIError("steer apply/generate needs --vector DIR", "policylens steer extract --out DIR first")
        vec = iv.SteeringVector.load(args.vector)
        prompts = args.prompts or ["I think the movie was"]
        if args.action == "generate":
            rows = {}
            for mult in args.multipliers:
                with vec.apply(model, multiplier=mult, positions=args.positions):
                    rows[str(mult)] = model.generate(prompts, max_new_tokens=args.max_new_tokens)
            write_json(out / "generations.json", rows)
            for mult, texts in rows.items():
                print(f"x{mult}: {texts[0]!r}")
            return 0
        sweep = iv.multiplier_sweep(model, vec, prompts, positive=args.positive, negative=args.negative,
                                    multipliers=args.multipliers, positions=args.positions)
        write_json(out / "sweep.json", sweep.to_dict())
        print(json.dumps(sweep.to_dict()["mean_metric"]))
        return 0

    p = sub.add_parser("steer", help="steering vectors: extract / apply (logit-diff sweep) / generate")
    common(p, out_default="runs/steer")
    p.add_argument("action", choices=["extract", "apply", "generate"])
    p.add_argument("--site", default="resid_post.15")
    p.add_argument("--method", default="mean_diff", help="mean_diff | pca | probe")
    p.add_argument("--pairs", help="JSONL with positive,negative (default: built-in sentiment pairs)")
    p.add_argument("--vector", help="a saved vector directory (for apply/generate)")
    p.add_argument("--prompts", nargs="*")
    p.add_argument("--multipliers", nargs="+", type=float, default=[-4.0, 0.0, 4.0])
    p.add_argument("--positions", default="all", choices=["all", "prompt", "generated"])
    p.add_argument("--positive", default=" good")
    p.add_argument("--negative", default=" bad")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.set_defaults(func=cmd_steer)

    # ------------------------------------------------------------ patch
    def cmd_patch(args):
        import interventions as iv

        model = load(args)
        res = iv.activation_patching(model, args.clean, args.corrupted, args.sites, answers=(args.answer, args.wrong),
                                     progress=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        res.plot().savefig(out / "patching.png", dpi=110)
        write_json(out / "patching.json", res.to_dict())
        print(f"patched {len(res.sites)} sites x {len(res.positions)} positions -> {out}")
        return 0

    p = sub.add_parser("patch", help="activation patching: clean vs corrupted, per site x position")
    common(p, out_default="runs/patch")
    p.add_argument("--clean", nargs="+", default=["The Eiffel Tower is in the city of"])
    p.add_argument("--corrupted", nargs="+", default=["The Colosseum is in the city of"])
    p.add_argument("--answer", default=" Paris")
    p.add_argument("--wrong", default=" Rome")
    p.add_argument("--sites", nargs="+", default=["resid_post.*"], help="site names or patterns (default: resid_post.*)")
    p.set_defaults(func=cmd_patch)

    # ------------------------------------------------------------ latent-cot
    def cmd_latent_cot(args):
        from analyses.latent_cot import run_study

        numbers = run_study(Path(args.out), profile=args.profile, progress=True)
        write_json(Path(args.out) / "numbers.json", numbers)
        print(f"latent-CoT study -> {args.out}")
        return 0

    p = sub.add_parser("latent-cot", help="train a tiny latent reasoner and run step-wise do-interventions")
    p.add_argument("--out", default="runs/latent_cot")
    p.add_argument("--profile", default="quick", choices=["quick", "full"])
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_latent_cot)

    # ------------------------------------------------------------ dpo-shift
    def cmd_dpo_shift(args):
        from analyses import dpo

        limits = {k: v for k, v in (("n_pairs", args.n_pairs), ("n_prompts", args.n_prompts), ("beta", args.beta),
                                     ("layers", args.layers)) if v is not None}
        if args.chat:
            limits["chat"] = True
        dpo.run_shift_report(args.reference, args.policy, args.preferences, args.out,
                             checkpoints=args.checkpoints or None, progress=True, **limits)
        print(f"report: {Path(args.out) / 'report.md'}\nnumbers: {Path(args.out) / 'report.json'}")
        return 0

    p = sub.add_parser("dpo-shift", help="how a DPO policy moved from its reference, and where inside")
    p.add_argument("--reference", required=True, help="reference model (packaged name, dir, GGUF, hub id)")
    p.add_argument("--policy", required=True, help="the DPO-trained policy")
    p.add_argument("--preferences", default="knowledge", help="knowledge | style | a prompt,chosen,rejected JSONL")
    p.add_argument("--checkpoints", nargs="*", help="checkpoint dirs for displacement over training")
    p.add_argument("--n-pairs", type=int, help="preference pairs scored and patched")
    p.add_argument("--n-prompts", type=int, help="prompts for KL / DID sampling and the per-layer internals")
    p.add_argument("--layers", type=int, nargs="+", help="layers to patch / steer (default: all)")
    p.add_argument("--beta", type=float, help="DPO beta of the implicit reward (default 0.1)")
    p.add_argument("--chat", action="store_true", help="render prompts with the chat template (as in training)")
    p.add_argument("--out", default="runs/dpo_shift")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_dpo_shift)
