"""``policylens demo``: every capability on the packaged model, one report (see :mod:`analyses.demo`)."""

from __future__ import annotations

from pathlib import Path

from analyses.demo import run_demo

from .options import add_model_options


def cmd_demo(args) -> int:
    if args.threads < 0:
        raise ValueError(f"--threads {args.threads}: give a positive thread count, or 0 for torch's own setting.")
    out = run_demo(model=args.model, out_root=Path(args.out), quick=args.quick, backend=args.backend,
                   device=args.device, stages=args.stages,
                   keep_checkpoints=args.keep_checkpoints, threads=args.threads or None, jobs=args.jobs)
    print(f"\nreport: {out / 'report.md'}\nnumbers: {out / 'report.json'}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("demo", help="the main job: every capability on the packaged model, one report")
    add_model_options(p, out_default="runs")
    p.add_argument("--quick", action="store_true", help="the quick profile: small grids of every stage")
    p.add_argument("--stages", nargs="+", default=None, help="run only these stages")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the DPO checkpoints and final policies (about 0.5 GB each); by default they "
                        "are deleted once scored")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for the stages (default 1; 0: torch's own setting, every core)")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes running stages side by side (default: 2 where this process may use two cores, "
                        "else 1; 1 runs every stage in one process, in order)")
    p.set_defaults(func=cmd_demo)
