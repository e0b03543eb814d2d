"""``policylens models`` and ``policylens capture``: the hooked core from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import hooked
from hooked.jsonutil import write_json

from .errors import CLIError
from .options import add_model_options, load_model, read_lines


def cmd_models(args) -> int:
    rows = hooked.list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':24} {'installed':9} {'cache':10} description")
    for r in rows:
        print(f"{r['name']:24} {str(r['installed']):9} {r['cache'][:10]:10} {r['description']}")
    print("\nBring your own: --model PATH (HF directory or .gguf) or a hub id when online.")
    return 0


def cmd_capture(args) -> int:
    model = load_model(args)
    prompts = read_lines(args.prompts)
    if not prompts:
        raise CLIError("no prompts given", "pass prompts as arguments or a .txt file with one per line")
    positions = args.positions
    if positions not in ("last", "mean", "all"):
        try:
            positions = int(positions)
        except ValueError:
            raise CLIError(f"--positions {positions!r} is not last/mean/all or an integer", "e.g. --positions last") from None
    acts = model.capture(prompts, args.sites, positions=positions, batch_size=args.batch_size, progress=True)
    out = Path(args.out)
    acts.save(out)
    summary = {s: list(acts[s].shape) for s in acts.sites}
    write_json(out / "summary.json", {"model": model.name, "sites": summary, "n_prompts": len(prompts)})
    print(f"captured {len(acts.sites)} sites for {len(prompts)} prompts -> {out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("models", help="list the packaged and cached models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("capture", help="capture activations at named sites to safetensors")
    add_model_options(p, out_default="runs/capture")
    p.add_argument("prompts", nargs="+", help="prompts, or .txt files with one prompt per line")
    p.add_argument("--sites", nargs="+", default=["resid_post.*"], help="site names or patterns (default: resid_post.*)")
    p.add_argument("--positions", default="last", help="last | mean | all | an integer (default: last)")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_capture)
