"""Tasks, the tiny reasoner (save/load), the curriculum trainer and the study on it."""
import json
import math

import pytest
import torch

from analyses.latent_cot import (GraphReachability, PointerChasing, ReasonerConfig, TinyReasoner, evaluate,
                                 intervention_study, tail_logits, train_reasoner)


def test_pointer_chasing_chain_follows_the_edges_in_the_question():
    task = PointerChasing(n_nodes=8, hops=3)
    b = task.sample(32, torch.Generator().manual_seed(0))
    v = task.vocab
    assert b.question.shape == (32, 10) and b.chain.shape == (32, 4) and task.n_steps == 4
    for q, chain, ans in zip(b.question, b.chain, b.answer):
        succ = dict(divmod(int(t) - v.n_nodes, v.n_nodes) for t in q[:8])
        assert sorted(succ) == list(range(8)) and sorted(succ.values()) == list(range(8))   # a permutation
        assert int(q[8]) == v.q and int(chain[0]) == int(q[9])                              # c_0 = start
        for i in range(3):
            assert succ[int(chain[i])] == int(chain[i + 1])
        assert int(ans) == int(chain[-1])


def test_counterfactual_shares_the_graph_but_not_the_start():
    task = PointerChasing(n_nodes=8, hops=3)
    base, other = task.counterfactual(torch.Generator().manual_seed(0), 16)
    assert torch.equal(base.question[:, :9], other.question[:, :9])
    assert (base.question[:, 9] != other.question[:, 9]).all()


def test_graph_reachability_answer_is_reachable_and_distractor_is_not():
    task = GraphReachability(n_nodes=12, hops=3, n_edges=10)
    b = task.sample(20, torch.Generator().manual_seed(0))
    v = task.vocab
    for q, chain in zip(b.question, b.chain):
        edges = [divmod(int(t) - v.n_nodes, v.n_nodes) for t in q[:10]]
        start, cands = int(q[11]), [int(q[12]), int(q[13])]
        seen, frontier = {start}, [start]
        while frontier:
            u = frontier.pop()
            for a, c in edges:
                if a == u and c not in seen:
                    seen.add(c)
                    frontier.append(c)
        assert [c in seen for c in cands].count(True) == 1
        assert int(chain[-1]) in cands and int(chain[-1]) in seen and int(chain[0]) == start
        assert all((int(chain[i]), int(chain[i + 1])) in edges for i in range(3))
    with pytest.raises(ValueError, match="room for at most"):
        GraphReachability(n_nodes=8, hops=3, n_edges=20)


def test_stage0_learns_explicit_cot_on_a_small_task():
    cfg = ReasonerConfig(task={"task": "pointer_chasing", "n_nodes": 4, "hops": 1}, seed=0)
    before = TinyReasoner(cfg)
    val = before.task.sample(256, torch.Generator().manual_seed(7))
    assert evaluate(before, val, 0)["exact"] < 0.2
    reasoner, hist = train_reasoner(cfg, steps_per_stage=[250], batch_size=64, eval_every=50)
    assert hist["stages"][0]["k"] == 0 and len(hist["stages"]) == 1
    assert evaluate(reasoner, val, 0)["exact"] >= 0.9


@torch.no_grad()
def test_runner_reads_the_answer_the_trainer_trains():
    """The runner's read-out after K latents equals the trainer's answer logits at stage K."""
    r = TinyReasoner(ReasonerConfig(d_model=32, d_mlp=64))
    b = r.task.sample(6, torch.Generator().manual_seed(0))
    logits, targets = tail_logits(r, b, r.n_steps)          # tail: <eot> <ans> a
    roll = r.runner().rollout(b.question, n_latents=r.n_steps, answer_ids=b.answer[:, None])
    torch.testing.assert_close(roll.readout_logits[:, -1], logits[:, -1], atol=1e-4, rtol=1e-4)
    assert torch.equal(targets[:, -1], b.answer)


def test_save_load_round_trip(tmp_path):
    r = TinyReasoner(ReasonerConfig(d_model=32, d_mlp=64, seed=3))
    path = r.save(tmp_path / "m")
    meta = json.loads((path / "config.json").read_text())
    assert meta["reasoner"]["d_model"] == 32 and meta["reasoner"]["mode"] == "coconut"
    back = TinyReasoner.load(path)
    ids = r.task.sample(4, torch.Generator().manual_seed(0)).question
    assert torch.equal(r.model(input_ids=ids).logits, back.model(input_ids=ids).logits)
    with pytest.raises(FileNotFoundError, match="config.json"):
        TinyReasoner.load(tmp_path / "missing")


def test_pause_reasoner_has_no_latent_runner_and_bad_stages_raise():
    with pytest.raises(ValueError, match="coconut-mode"):
        TinyReasoner(ReasonerConfig(d_model=32, d_mlp=64, mode="pause")).runner()
    with pytest.raises(ValueError, match="do not fit a task with K=4"):
        train_reasoner(ReasonerConfig(d_model=32, d_mlp=64), steps_per_stage=[1] * 6)
    with pytest.raises(ValueError, match="mode must be one of"):
        ReasonerConfig(mode="cot")


def test_intervention_study_numbers_are_consistent():
    r = TinyReasoner(ReasonerConfig(d_model=32, d_mlp=64))
    res = intervention_study(r, n_eval=24, seed=0, operators=["zero", "swap", "step_mean"])
    K = r.n_steps
    zero = res["necessity"]["zero"]
    assert len(zero["d_acc"]) == K and all(-1 <= x <= 1 for x in zero["d_acc"])
    for k in range(K):   # accuracy change = flips to right - flips to wrong
        assert abs(zero["d_acc"][k] - (zero["flip_to_right"][k] - zero["flip_to_wrong"][k])) < 1e-6
    assert all(math.isfinite(x) for x in zero["kl"]) and any(abs(x) > 0 for x in zero["d_logp"])
    for k in range(K):   # an answer that flipped needs a read-out distribution that moved
        if zero["flip_to_right"][k] + zero["flip_to_wrong"][k] > 0:
            assert zero["kl"][k] > 0, k
    kl = torch.tensor(res["influence"]["kl"], dtype=torch.float)
    assert kl.shape == (K, K) and torch.isnan(kl.diagonal()).all()
    # zeroing h_0 moves every later latent (distance > 0 below), so every later read-out moves: KL > 0
    assert (kl[0, 1:] > 0).all() and torch.isfinite(kl[0, 1:]).all()
    dist = torch.tensor(res["influence"]["distance"], dtype=torch.float)
    assert (dist[0, 1:] > 0).all() and torch.isnan(dist[1:, 0]).all()   # only later steps move
    assert len(res["decidability"]["acc_after_n_steps"]) == K + 1
    modes = res["answer_modes"]
    assert modes["n_candidates"] == 24 and modes["selection"]["min_cover"] == 0.9
    assert (modes["n_questions"] == 0) == (modes["output_commitment"] == [])
    for key in ("first_correct", "stable_correct"):
        assert abs(sum(res["decidability"][key + "_hist"]) + res["decidability"][key + "_never"] - 1) < 1e-6
