"""``policylens demo``: every capability on the packaged model, into one report.

Each stage is timed (wall-clock, CPU seconds of the process that ran it, and when it started after the run
began; the 1-minute load average at the start and end of the run is recorded too, so a time measured on a
busy machine reads as such); each returns a dict of numbers (into ``report.json``), a markdown section (into
``report.md``, in the stages' order whatever order they ran in) and may write PNGs.
A stage that fails is reported as failed with its error, and the others still run:
a report that hides a failure would be worse than one that shows it.

With ``jobs`` > 1 the stages run in that many worker processes (spawned; each loads the model on first use and
runs one stage at a time with ``threads`` torch threads). The small models are latency-bound, so a second
thread in one process barely helps, while a second process running another stage halves the wall time. The
scheduler starts, whenever a worker is free, the ready stage with the longest chain of work behind it (its
own estimated cost plus the longest chain of the stages waiting for it: ``dpo`` first, since the four policy
studies need its policy).
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from datetime import datetime
from pathlib import Path

import torch

from hooked.jsonutil import write_json
from hooked.util import torch_threads

from .stages import STAGES, DemoContext, Stage


def default_jobs() -> int:
    """Worker processes of the demo by default: two where this process may use two cores or more, else one."""
    return min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def run_demo(model: str = "smollm2-135m-instruct", out_root: Path = Path("runs"), quick: bool = False,
             backend: str = "tl", device: str = "cpu", stages: list[str] | None = None,
             keep_checkpoints: bool = False, threads: int | None = 1, jobs: int | None = None) -> Path:
    """Run the demo stages into ``out_root/<timestamp>/``; returns that folder.

    ``threads``: torch threads of each process running stages (``None`` keeps torch's setting). One by
    default: the packaged models are small, and on a machine shared with other jobs two OpenMP threads
    spinning on two busy cores made the quick demo about ten times slower than one thread.

    ``jobs``: worker processes running stages side by side (default :func:`default_jobs`: two where this
    process may use two cores); 1 runs every stage in this process, in order.

    ``keep_checkpoints``: keep the DPO checkpoints and final policies (about 0.5 GB each) on disk;
    by default they are deleted once scored, and the run leaves metrics, plots and small artifacts."""
    names = [s.name for s in STAGES]
    if stages:
        unknown = [s for s in stages if s not in names]
        if unknown:
            raise ValueError(f"Unknown demo stage(s) {unknown}; stages: {names}.")
    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: give the number of worker processes, 1 or more (1 runs the stages in "
                         "this process, in order).")
    selected = [s for s in STAGES if not stages or s.name in stages]
    out = Path(out_root) / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    profile = "quick" if quick else "full"
    print(f"policylens demo ({profile}, {jobs} worker process{'es' if jobs > 1 else ''}) -> {out}", flush=True)
    t0, cpu0, load0 = time.time(), _cpu_seconds(), os.getloadavg()[0]
    ctx = DemoContext(model, out, quick, backend, device, keep_checkpoints)
    report = {"model": model, "profile": profile, "backend": backend, "jobs": jobs,
              "torch_threads": threads or torch.get_num_threads(), "stages": {}}
    records: dict[str, dict] = {}

    def finished(rec: dict) -> None:
        records[rec["name"]] = rec
        if rec.get("policy_dir") and ctx.policy_dir is None:
            ctx.policy_dir = Path(rec["policy_dir"])
        if rec.get("model") and "model_info" not in report:
            report["model"], report["model_info"] = rec["model"]["name"], rec["model"]
        _write(out, report, records, selected, profile, backend, jobs)

    try:
        if jobs == 1 or len(selected) == 1:
            with torch_threads(threads):
                for st in selected:
                    finished(_execute(ctx, st, t0))
        else:
            _run_parallel(ctx, selected, jobs, threads, t0, finished)
    finally:  # the DPO policy kept for the policy studies never outlives the run (unless asked to)
        freed = ctx.release_policy()
        if freed:
            print(f"DPO policy deleted after the policy studies ({freed / 2**20:.0f} MB)", flush=True)
    report["seconds_total"] = round(time.time() - t0, 1)
    report["cpu_seconds_total"] = round(_cpu_seconds() - cpu0, 1)
    report["load_average_1min"] = {"start": round(load0, 2), "end": round(os.getloadavg()[0], 2)}
    _write(out, report, records, selected, profile, backend, jobs, final=True)
    failed = [k for k, v in report["stages"].items() if v["status"] != "ok"]
    if failed:
        print(f"\nstages that failed: {failed} (see report.md)", flush=True)
    return out


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its ended child processes (the demo's workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _execute(ctx: DemoContext, st: Stage, t0: float) -> dict:
    """Run one stage in this process; returns its record (numbers, markdown, status and timings)."""
    print(f"\n== {st.title} ==", flush=True)
    start, t, cpu = time.time() - t0, time.perf_counter(), time.process_time()
    try:
        numbers, text = st.fn(ctx)
        status = "ok"
    except Exception as e:  # report the failure, keep going with the other stages
        numbers, text, status = {"error": f"{type(e).__name__}: {e}"}, f"**failed**: `{type(e).__name__}: {e}`", "failed"
        traceback.print_exc()
    secs, cpu_secs = time.perf_counter() - t, time.process_time() - cpu
    print(f"[{st.name}: {secs:.1f} s, {cpu_secs:.1f} CPU s]", flush=True)
    return {"name": st.name, "status": status, "seconds": round(secs, 1), "cpu_seconds": round(cpu_secs, 1),
            "started": round(start, 1), "numbers": numbers, "text": text,
            "policy_dir": None if ctx.policy_dir is None else str(ctx.policy_dir), "model": ctx.model_info()}


def _failed(st: Stage, error: BaseException, t0: float) -> dict:
    msg = f"{type(error).__name__}: {error}"
    return {"name": st.name, "status": "failed", "seconds": 0.0, "cpu_seconds": 0.0,
            "started": round(time.time() - t0, 1), "numbers": {"error": msg},
            "text": f"**failed** (its worker process): `{msg}`", "policy_dir": None, "model": None}


def chain_costs(selected: list[Stage]) -> dict[str, float]:
    """Each stage's cost plus the longest chain of selected stages that must wait for it (the scheduler's
    priority: the critical path first)."""
    waiting = {s.name: [w for w in selected if s.name in w.after] for s in selected}
    memo: dict[str, float] = {}

    def chain(s: Stage) -> float:
        if s.name not in memo:
            memo[s.name] = s.cost + max((chain(w) for w in waiting[s.name]), default=0.0)
        return memo[s.name]

    return {s.name: chain(s) for s in selected}


# one context per worker process, made by the pool's initializer; the model and policy stay loaded between stages
_WORKER_CTX: DemoContext | None = None


def _worker_init(spec: dict, threads: int | None) -> None:
    global _WORKER_CTX
    if threads:
        torch.set_num_threads(threads)
    _WORKER_CTX = DemoContext(**spec)


def _worker_run(name: str, policy_dir: str | None, t0: float) -> dict:
    ctx = _WORKER_CTX
    if policy_dir is not None and ctx.policy_dir is None:
        ctx.policy_dir = Path(policy_dir)
    return _execute(ctx, next(s for s in STAGES if s.name == name), t0)


def _run_parallel(ctx: DemoContext, selected: list[Stage], jobs: int, threads: int | None, t0: float, finished) -> None:
    names = {s.name for s in selected}
    priority = chain_costs(selected)
    pending = sorted(selected, key=lambda s: -priority[s.name])
    done: set[str] = set()
    spec = dict(model_spec=ctx.model_spec, out=ctx.out, quick=ctx.quick, backend=ctx.backend, device=ctx.device,
                keep_checkpoints=ctx.keep_checkpoints)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                             initargs=(spec, threads)) as pool:
        running = {}
        while pending or running:
            for st in [s for s in pending if all(d in done or d not in names for d in s.after)]:
                if len(running) >= jobs:
                    break
                pending.remove(st)
                policy_dir = None if ctx.policy_dir is None else str(ctx.policy_dir)
                running[pool.submit(_worker_run, st.name, policy_dir, t0)] = st
            ended, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in ended:
                st = running.pop(fut)
                try:
                    rec = fut.result()
                except Exception as e:  # the worker itself died (e.g. out of memory): report, go on with the others
                    rec = _failed(st, e, t0)
                done.add(st.name)
                finished(rec)


def _write(out: Path, report: dict, records: dict, selected: list[Stage], profile: str, backend: str, jobs: int,
           final: bool = False) -> None:
    """report.json and report.md from the stages ended so far, in the stages' order."""
    report["stages"] = {s.name: {"status": r["status"], "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"],
                                 "started": r["started"], **r["numbers"]}
                        for s in selected if (r := records.get(s.name))}
    info = report.get("model_info")
    model = (f"Model `{info['name']}` ({info['arch']}, {info['n_layers']} layers, d_model={info['d_model']})"
             if info else f"Model `{report['model']}`")
    workers = "in one process" if jobs == 1 else f"in {jobs} worker processes side by side"
    md = [f"# policylens demo report\n\n{model}, profile `{profile}`, backend `{backend}`, "
          f"{datetime.now():%Y-%m-%d %H:%M}; stages run {workers}, {report['torch_threads']} torch "
          f"thread{'s' if report['torch_threads'] != 1 else ''} each.\n",
          "The grids here are the demo's sizes, stated in each section; each study's own subcommand runs its full "
          "grid (`policylens probe`, `steer`, `dpo-shift`, `latent-cot --profile full`, `introspect`, `transfer`, "
          "`perturb`, `trajectory`).\n"]
    for s in selected:
        if (r := records.get(s.name)) is not None:
            md.append(f"## {s.title}\n\n_{r['status']}, {r['seconds']:.0f} s ({r['cpu_seconds']:.0f} CPU s), "
                      f"started at {r['started']:.0f} s_\n\n{r['text']}\n")
    write_json(out / "report.json", report)
    if final:
        la = report["load_average_1min"]
        md.append(f"---\nTotal time {report['seconds_total']:.0f} s ({report['cpu_seconds_total']:.0f} CPU s; load "
                  f"average {la['start']:.2f} at the start, {la['end']:.2f} at the end).\n")
    (out / "report.md").write_text("\n".join(md))
