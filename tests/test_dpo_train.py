"""A real short DPO run (TRL) on a tiny random Llama, and the policy-shift measures on it."""
import json
import math

import pytest
import torch

import hooked
from analyses import dpo
from analyses.dpo import policy as P

PAIRS = dpo.knowledge_set(n=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = hooked.tiny_model("llama", seed=0, n_layers=2)
    out = tmp_path_factory.mktemp("dpo")
    run = dpo.train(base, PAIRS, out, steps=4, save_every=2, learning_rate=1e-3, batch_size=4, progress=False)
    policy = hooked.load_model(run.policy_dir)
    return base, policy, run


def test_train_writes_checkpoints_and_log(trained):
    base, policy, run = trained
    assert run.steps == [2, 4]
    assert [d.name for d in run.checkpoint_dirs] == ["checkpoint-2"]
    for d in run.checkpoint_dirs + [run.policy_dir]:
        assert (d / "model.safetensors").exists() and (d / "config.json").exists()
    steps = [e for e in run.log if "loss" in e]
    assert len(steps) == 4 and steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    cfg = json.loads((run.policy_dir.parent / "train_config.json").read_text())
    assert cfg["steps"] == 4 and cfg["n_pairs"] == 4 and cfg["beta"] == 0.1
    assert len((run.policy_dir.parent / "preferences.jsonl").read_text().splitlines()) == 4


def test_logprobs_match_trl(trained):
    """Step 1 of TRL is logged before the update: its logps are the reference's on the whole batch."""
    base, policy, run = trained
    lp = P.pair_logprobs(base, PAIRS)
    first = run.log[0]
    assert lp["chosen"].mean().item() == pytest.approx(first["logps/chosen"], abs=1e-3)
    assert lp["rejected"].mean().item() == pytest.approx(first["logps/rejected"], abs=1e-3)


def test_short_run_moves_margin_towards_preferences(trained):
    base, policy, run = trained
    ref_lp, pol_lp = P.pair_logprobs(base, PAIRS), P.pair_logprobs(policy, PAIRS)
    r = P.implicit_reward(pol_lp, ref_lp, beta=0.1)
    assert r["margin"] > 0.02 and r["accuracy"] >= 0.75
    # the margin is exactly beta times the change in preference log-odds
    dm = ((pol_lp["chosen"] - pol_lp["rejected"]) - (ref_lp["chosen"] - ref_lp["rejected"])).mean().item()
    assert r["margin"] == pytest.approx(0.1 * dm, rel=1e-9)
    d = P.displacement(ref_lp, [ref_lp, pol_lp], ["ref", "policy"])
    assert d["chosen"][0] == 0.0 and d["chosen"][1] - d["rejected"][1] == pytest.approx(dm, rel=1e-9)
    s = P.policy_samples(base, policy, PAIRS.prompts[:2], k=3, max_new_tokens=5)
    assert s["kl"]["n_samples"] == 6 and math.isfinite(s["kl"]["kl"]) and s["kl"]["kl"] != 0.0
    assert s["sampler_rescore_max_abs_diff"] < 1e-3  # the sampler's log q equals the rescored log pi


def test_identical_policy_gives_zero_reward_and_kl(trained):
    base, _, _ = trained
    lp = P.pair_logprobs(base, PAIRS)
    r = P.implicit_reward(lp, lp, beta=0.1)
    assert r["margin"] == 0.0 and r["reward_chosen"] == 0.0 and r["accuracy"] == 0.0
    s = P.policy_samples(base, base, PAIRS.prompts[:2], k=2, max_new_tokens=4)
    assert s["kl"]["kl"] == 0.0


def test_bad_input_errors(trained, tmp_path):
    base, policy, _ = trained
    long_prompt = "word " * 300  # tiny models have a 256-token context
    with pytest.raises(ValueError, match="longer than the context of 256"):
        P.sequence_logprobs(base, [long_prompt], ["ok"])
    with pytest.raises(ValueError, match="field 'chosen'"):
        dpo.train(base, [{"prompt": "q", "chosen": "", "rejected": "b"}], tmp_path, steps=1, progress=False)
    with pytest.raises(ValueError, match="steps, save_every and batch_size"):
        dpo.train(base, PAIRS, tmp_path, steps=0, progress=False)
