"""`policylens demo --quick` end to end on the packaged SmolLM2 (the README's first command, quick profile)."""

import json

import pytest

from analyses.demo import STAGES, run_demo

pytestmark = [pytest.mark.acceptance, pytest.mark.demo]


def test_quick_demo_writes_a_complete_report(tmp_path):
    out = run_demo(out_root=tmp_path, quick=True)
    report = json.loads((out / "report.json").read_text())
    assert [k for k in report["stages"]] == [s.name for s in STAGES]
    assert {k: v["status"] for k, v in report["stages"].items()} == {s.name: "ok" for s in STAGES}
    st = report["stages"]
    assert st["capture"]["next_token"]["The capital of France is"].strip() == "Paris"
    assert 0 < st["entropy"]["total"] < 30 * st["entropy"]["max_per_layer"]
    assert st["probes"]["factual"]["peak_acc"] > 0.75  # well above chance (0.5) somewhere in depth
    assert st["latent_cot"]  # the latent-CoT study returned its numbers
    md = (out / "report.md").read_text()
    for s in STAGES:
        assert f"## {s.title}" in md
    pngs = {p.name for p in out.rglob("*.png")}
    assert {"concept_depth.png", "knowledge_entropy_layers.png"} <= pngs and len(pngs) >= 6
