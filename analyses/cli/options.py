"""Options every model-running subcommand shares (``--model --backend --device --dtype --out``) and
reading prompts given on the command line or in ``.txt`` files."""

from __future__ import annotations

import argparse
from pathlib import Path

import hooked

DEFAULT_MODEL = "smollm2-135m-instruct"


def add_model_options(p: argparse.ArgumentParser, out_default: str | None = None) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="packaged name, local HF dir, .gguf file or hub id (default: %(default)s)")
    p.add_argument("--backend", default="tl", choices=["tl", "nnsight"], help="hook backend (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default: %(default)s)")
    if out_default is not None:
        p.add_argument("--out", default=out_default, help="output directory (default: %(default)s)")


def load_model(args: argparse.Namespace):
    """The model named by ``--model``, loaded as ``--backend/--device/--dtype`` say."""
    return hooked.load_model(args.model, backend=args.backend, device=args.device, dtype=args.dtype)


def read_lines(items: list[str]) -> list[str]:
    """Each item as a text, except ``.txt`` files, which give one text per non-empty line."""
    out = []
    for item in items:
        p = Path(item)
        if p.suffix == ".txt" and p.exists():
            out += [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
        else:
            out.append(item)
    return out
