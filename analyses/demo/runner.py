"""``policylens demo``: every capability on the packaged model, into one report.

Stages run in order, each timed (wall-clock and this process's CPU seconds; the 1-minute load
average at the start and end of the run is recorded too, so a time measured on a busy machine reads as
such); each returns a dict of numbers (into
``report.json``), a markdown section (into ``report.md``) and may write PNGs.
A stage that fails is reported as failed with its error, and the others still run:
a report that hides a failure would be worse than one that shows it.
"""

from __future__ import annotations

import os
import time
import traceback
from datetime import datetime
from pathlib import Path

import torch

import hooked
from hooked.jsonutil import write_json
from hooked.util import torch_threads

from .stages import STAGES, DemoContext


def run_demo(model: str = "smollm2-135m-instruct", out_root: Path = Path("runs"), quick: bool = False,
             backend: str = "tl", device: str = "cpu", stages: list[str] | None = None,
             keep_checkpoints: bool = False, threads: int | None = 1) -> Path:
    """Run the demo stages into ``out_root/<timestamp>/``; returns that folder.

    ``threads``: torch threads while the stages run (restored after; ``None`` keeps the current setting).
    One by default: the packaged models are small, and on a machine shared with other jobs two OpenMP
    threads spinning on two busy cores made the quick demo about ten times slower than one thread.

    ``keep_checkpoints``: keep the DPO checkpoints and final policies (about 0.5 GB each) on disk;
    by default they are deleted once scored, and the run leaves metrics, plots and small artifacts."""
    names = [s.name for s in STAGES]
    if stages:
        unknown = [s for s in stages if s not in names]
        if unknown:
            raise ValueError(f"Unknown demo stage(s) {unknown}; stages: {names}.")
    out = Path(out_root) / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    profile = "quick" if quick else "full"
    print(f"policylens demo ({profile}) -> {out}", flush=True)
    t0, cpu0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    loaded = hooked.load_model(model, backend=backend, device=device)
    ctx = DemoContext(loaded, model, out, quick, backend, device, {}, keep_checkpoints)
    report = {"model": loaded.name, "profile": profile, "backend": backend, "stages": {}}
    md = [f"# policylens demo report\n\nModel `{loaded.name}` ({loaded.arch}, {loaded.n_layers} layers, "
          f"d_model={loaded.d_model}), profile `{profile}`, backend `{backend}`, {datetime.now():%Y-%m-%d %H:%M}.\n",
          "The grids here are the demo's sizes, stated in each section; each study's own subcommand runs its full "
          "grid (`policylens probe`, `steer`, `dpo-shift`, `latent-cot --profile full`, `introspect`, `transfer`, "
          "`perturb`, `trajectory`).\n"]
    report["torch_threads"] = threads or torch.get_num_threads()
    try:
        with torch_threads(threads):
            _run_stages(ctx, stages, report, md, out)
    finally:  # the DPO policy kept for the policy studies never outlives the run (unless asked to)
        ctx.release_policy()
    report["seconds_total"] = round(time.perf_counter() - t0, 1)
    report["cpu_seconds_total"] = round(time.process_time() - cpu0, 1)
    report["load_average_1min"] = {"start": round(load0, 2), "end": round(os.getloadavg()[0], 2)}
    write_json(out / "report.json", report)
    la = report["load_average_1min"]
    (out / "report.md").write_text("\n".join(md) + f"\n---\nTotal time {report['seconds_total']:.0f} s "
                                   f"({report['cpu_seconds_total']:.0f} CPU s; load average {la['start']:.2f} at the "
                                   f"start, {la['end']:.2f} at the end).\n")
    failed = [k for k, v in report["stages"].items() if v["status"] != "ok"]
    if failed:
        print(f"\nstages that failed: {failed} (see report.md)", flush=True)
    return out


def _run_stages(ctx, stages, report, md, out):
    for st in STAGES:
        if stages and st.name not in stages:
            continue
        print(f"\n== {st.title} ==", flush=True)
        t, cpu = time.perf_counter(), time.process_time()
        try:
            numbers, text = st.fn(ctx)
            status = "ok"
        except Exception as e:  # report the failure, keep going with the other stages
            numbers, text, status = {"error": f"{type(e).__name__}: {e}"}, f"**failed**: `{type(e).__name__}: {e}`", "failed"
            traceback.print_exc()
        secs, cpu_secs = time.perf_counter() - t, time.process_time() - cpu
        ctx.results[st.name] = numbers
        report["stages"][st.name] = {"status": status, "seconds": round(secs, 1), "cpu_seconds": round(cpu_secs, 1),
                                     **numbers}
        print(f"[{st.name}: {secs:.1f} s, {cpu_secs:.1f} CPU s]", flush=True)
        md.append(f"## {st.title}\n\n_{status}, {secs:.0f} s ({cpu_secs:.0f} CPU s)_\n\n{text}\n")
        write_json(out / "report.json", report)
        (out / "report.md").write_text("\n".join(md))
