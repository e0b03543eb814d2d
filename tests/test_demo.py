"""`policylens demo --quick` end to end on the packaged SmolLM2 (the README's first command, quick profile)."""

import json

import pytest

from analyses.demo import STAGES, run_demo
from analyses.demo.runner import chain_costs, default_jobs

pytestmark = [pytest.mark.acceptance, pytest.mark.demo]

DISK_BUDGET = 200 * 2**20  # the budget for the full demo; the quick one must keep within it too


def test_quick_demo_writes_a_complete_report(tmp_path):
    out = run_demo(out_root=tmp_path, quick=True)
    report = json.loads((out / "report.json").read_text())
    assert [k for k in report["stages"]] == [s.name for s in STAGES]
    assert {k: v["status"] for k, v in report["stages"].items()} == {s.name: "ok" for s in STAGES}
    st = report["stages"]
    # each stage timed in wall-clock and CPU seconds; the run records its threads and the load around it
    assert all(v["seconds"] >= 0 and v["cpu_seconds"] >= 0 for v in st.values())
    assert report["torch_threads"] == 1 and set(report["load_average_1min"]) == {"start", "end"}
    # CPU of the worker processes too: at least the stages' own CPU seconds
    assert report["cpu_seconds_total"] >= sum(v["cpu_seconds"] for v in st.values()) - 1
    assert report["jobs"] == default_jobs() and report["model"] == "smollm2-135m-instruct"
    # the policy studies start only once the DPO stage (which trains their policy) has ended
    dpo_end = st["dpo"]["started"] + st["dpo"]["seconds"]
    for name in ("introspection", "transfer", "perturbation", "trajectory"):
        assert st[name]["started"] >= dpo_end - 0.2, (name, st[name]["started"], dpo_end)
    assert st["capture"]["next_token"]["The capital of France is"].strip() == "Paris"
    assert 0 < st["entropy"]["total"] < 30 * st["entropy"]["max_per_layer"]
    assert st["probes"]["factual"]["peak_acc"] > 0.75  # well above chance (0.5) somewhere in depth
    assert st["latent_cot"]  # the latent-CoT study returned its numbers
    md = (out / "report.md").read_text()
    for s in STAGES:
        assert f"## {s.title}" in md
    pngs = {p.name for p in out.rglob("*.png")}
    assert {"concept_depth.png", "knowledge_entropy_layers.png"} <= pngs and len(pngs) >= 6
    # disk budget: metrics, plots and small artifacts only; DPO weights are deleted once scored
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size <= DISK_BUDGET, f"the quick demo left {size / 2**20:.0f} MB on disk"
    assert not [p for p in out.rglob("*") if p.is_dir() and (p.name == "policy" or p.name.startswith("checkpoint-"))]
    # what safetensors remain are captures and vectors, no model weights
    assert all(p.stat().st_size < 20 * 2**20 for p in out.rglob("*.safetensors"))


def test_train_result_removes_scored_models(tmp_path):
    from analyses.dpo.train import TrainResult

    dirs = [tmp_path / "checkpoint-2", tmp_path / "checkpoint-4", tmp_path / "policy", tmp_path / "trl"]
    for i, d in enumerate(dirs):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x" * (1000 * (i + 1)))
    (tmp_path / "train_log.json").write_text("[]")
    run = TrainResult(dirs[2], dirs[:2], [], [2, 4, 6])
    assert run.remove_models(keep_policy=True) == 1000 + 2000 + 4000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy", "train_log.json"]
    assert run.checkpoint_dirs == [] and run.steps == [6]
    assert run.remove_models() == 3000 and sorted(p.name for p in tmp_path.iterdir()) == ["train_log.json"]


def test_scheduler_puts_the_critical_path_first():
    """The DPO stage carries the four policy studies behind it: its chain is its cost plus the longest of theirs,
    so it starts before the longer but independent latent-CoT study; a stage run alone is just its own cost."""
    by = {s.name: s for s in STAGES}
    chains = chain_costs(STAGES)
    longest_study = max(by[n].cost for n in ("introspection", "transfer", "perturbation", "trajectory"))
    assert chains["dpo"] == by["dpo"].cost + longest_study
    assert chains["latent_cot"] == by["latent_cot"].cost < chains["dpo"]
    assert max(chains, key=chains.get) == "dpo"
    assert chain_costs([by["dpo"], by["capture"]]) == {"dpo": by["dpo"].cost, "capture": by["capture"].cost}


def test_demo_runs_in_one_process_with_jobs_1_and_rejects_bad_input(tmp_path):
    out = run_demo(out_root=tmp_path, quick=True, stages=["capture", "entropy"], jobs=1)
    report = json.loads((out / "report.json").read_text())
    assert report["jobs"] == 1 and list(report["stages"]) == ["capture", "entropy"]
    st = report["stages"]
    assert st["entropy"]["started"] >= st["capture"]["started"] + st["capture"]["seconds"] - 0.2  # in order
    assert "stages run in one process" in (out / "report.md").read_text()
    with pytest.raises(ValueError, match="jobs=0"):
        run_demo(out_root=tmp_path, quick=True, jobs=0)
    with pytest.raises(ValueError, match="Unknown demo stage"):
        run_demo(out_root=tmp_path, quick=True, stages=["capture", "nope"])
