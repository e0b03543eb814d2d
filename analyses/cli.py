"""The ``policylens`` command line.

Every subcommand takes ``--model`` (packaged name, local path, GGUF file or hub id),
``--out``, ``--device`` and ``--backend``. Errors print one readable line and what to do,
not a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"


class CLIError(Exception):
    """A user-facing error: one line plus a hint."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


def _common(p: argparse.ArgumentParser, out_default: str | None = None) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="packaged name, local HF dir, .gguf file or hub id (default: %(default)s)")
    p.add_argument("--backend", default="tl", choices=["tl", "nnsight"], help="hook backend (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default: %(default)s)")
    if out_default is not None:
        p.add_argument("--out", default=out_default, help="output directory (default: %(default)s)")


def _load(args):
    import hooked

    return hooked.load_model(args.model, backend=args.backend, device=args.device, dtype=args.dtype)


def _read_lines(path_or_text: list[str]) -> list[str]:
    out = []
    for item in path_or_text:
        p = Path(item)
        if p.suffix in (".txt",) and p.exists():
            out += [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
        else:
            out.append(item)
    return out


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=float))


# ---------------------------------------------------------------- subcommands
def cmd_models(args) -> int:
    import hooked

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
    model = _load(args)
    prompts = _read_lines(args.prompts)
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
    _write_json(out / "summary.json", {"model": model.name, "sites": summary, "n_prompts": len(prompts)})
    print(f"captured {len(acts.sites)} sites for {len(prompts)} prompts -> {out}")
    return 0


def cmd_demo(args) -> int:
    from analyses.demo import run_demo

    out = run_demo(model=args.model, out_root=Path(args.out), quick=args.quick, backend=args.backend,
                   device=args.device, stages=args.stages)
    print(f"\nreport: {out / 'report.md'}\nnumbers: {out / 'report.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="policylens", description=__doc__.split("\n\n")[0])
    ap.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list the packaged and cached models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("capture", help="capture activations at named sites to safetensors")
    _common(p, out_default="runs/capture")
    p.add_argument("prompts", nargs="+", help="prompts, or .txt files with one prompt per line")
    p.add_argument("--sites", nargs="+", default=["resid_post.*"], help="site names or patterns (default: resid_post.*)")
    p.add_argument("--positions", default="last", help="last | mean | all | an integer (default: last)")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_capture)

    from analyses import cli_more

    cli_more.add_subcommands(sub, _common, _load, _write_json, CLIError)

    p = sub.add_parser("demo", help="the main job: every capability on the packaged model, one report")
    _common(p, out_default="runs")
    p.add_argument("--quick", action="store_true", help="the ~3-minute profile")
    p.add_argument("--stages", nargs="+", default=None, help="run only these stages")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("policylens: interrupted", file=sys.stderr)
        return 130
    except CLIError as e:
        print(f"policylens {args.command}: error: {e}" + (f"\n  try: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, IndexError, KeyError, RuntimeError) as e:
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"policylens {args.command}: error: {msg}\n  try: policylens {args.command} --help  (or --debug for the traceback)",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
