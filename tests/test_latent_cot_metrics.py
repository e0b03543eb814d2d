"""Step-wise metrics on hand-built rollouts with known answers."""
import math

import pytest
import torch

from analyses.latent_cot import decidability, influence_matrix, necessity
from interventions.latent_cot import LatentRollout, StepSweep


def _roll(read_logits, latents=None, logp=None):
    N, n1, _ = read_logits.shape
    lat = torch.zeros(N, n1 - 1, 4) if latents is None else latents
    return LatentRollout(lat, lat, lat, read_logits, logp)


def _onehot_logits(tokens, V=5, scale=10.0):
    return torch.nn.functional.one_hot(tokens, V).float() * scale


def test_necessity_counts_flips_and_kl():
    gold = torch.tensor([0, 1, 2, 3])
    clean = _roll(_onehot_logits(torch.tensor([[0, 0], [1, 1], [2, 2], [0, 0]])),
                  logp=torch.tensor([[-1.0, -1.0]] * 4))
    inter = _roll(_onehot_logits(torch.tensor([[0, 0], [1, 4], [2, 2], [0, 3]])),
                  logp=torch.tensor([[-1.0, -3.0]] * 4))
    m = necessity(clean, inter, gold)
    assert m["acc_clean"] == 0.75 and m["acc"] == 0.75
    assert m["flip_to_wrong"] == 0.25 and m["flip_to_right"] == 0.25 and m["d_acc"] == 0.0
    assert abs(m["d_logp"] + 2.0) < 1e-6
    # two rows moved a 10-logit one-hot to another token: KL = 10 * (1 - 2 eps) approx, the others 0
    assert 4.0 < m["kl"] < 5.1
    assert necessity(clean, clean, gold)["kl"] == 0.0


def test_influence_locality_and_span():
    K, N = 3, 2
    clean = _roll(torch.zeros(N, K + 1, 5), latents=torch.zeros(N, K, 4))
    # intervening at 0 moves h_1 by 2 and h_2 by 0; at 1 moves h_2 by 2 (norm units of 1)
    lat0 = torch.zeros(N, K, 4)
    lat0[:, 1, 0] = 2.0
    lat1 = torch.zeros(N, K, 4)
    lat1[:, 2, 0] = 2.0
    sweep = StepSweep(clean, [0, 1], [_roll(torch.zeros(N, K + 1, 5), lat0), _roll(torch.zeros(N, K + 1, 5), lat1)])
    inf = influence_matrix(sweep, mean_norm=1.0)
    d = inf["distance"]
    assert d[0, 1] == 2.0 and d[0, 2] == 0.0 and d[1, 2] == 2.0 and math.isnan(d[2, 2])
    assert inf["distance_summary"]["locality"] == 1.0 and inf["distance_summary"]["span"] == 1.0
    assert math.isnan(inf["kl_summary"]["locality"])      # no read-out changed at all


def test_influence_of_a_strictly_local_chain_is_local_by_both_measures():
    """do(h_i) changes only node i+1: the latent h_{i+1} and the read-out taken where h_{i+1} is
    produced (after i+1 latents, index i+1). Node j is read after j latents (the reference), so
    both matrices put all weight on j = i+1: locality 1.0, span 1.0. Reading node j one latent
    later (index j+1, the old definition) sees no KL at all for this chain."""
    K, N, V = 4, 3, 5
    clean = _roll(_onehot_logits(torch.zeros(N, K + 1, dtype=torch.long), V), latents=torch.zeros(N, K, 4))
    rolls = []
    for i in range(K):
        reads = torch.zeros(N, K + 1, dtype=torch.long)
        reads[:, i + 1] = 1                                  # the direct effect: the next read-out flips
        lat = torch.zeros(N, K, 4)
        if i + 1 < K:
            lat[:, i + 1, 0] = 3.0                           # ... and so does the next latent, nothing later
        rolls.append(_roll(_onehot_logits(reads, V), lat))
    inf = influence_matrix(StepSweep(clean, list(range(K)), rolls), mean_norm=1.0)
    for key in ("kl_summary", "distance_summary"):
        assert inf[key]["locality"] == 1.0 and inf[key]["span"] == 1.0
    kl_flip = 10.0 * (1 - 2 * math.exp(-10) / (1 + 4 * math.exp(-10)))   # KL between two 10-logit one-hots, approx
    for i in range(K - 1):
        assert inf["kl"][i, i + 1] == pytest.approx(kl_flip, rel=1e-3) and inf["distance"][i, i + 1] == 3.0
        assert all(inf["kl"][i, j] == 0 and inf["distance"][i, j] == 0 for j in range(i + 2, K))


def test_decidability_first_correct_step_is_the_headline():
    gold = torch.tensor([1, 1, 1])
    reads = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 1]])     # after 0, 1, 2 steps
    clean = _roll(_onehot_logits(reads))
    lens = _onehot_logits(torch.tensor([[2, 1], [2, 0], [0, 0]]))
    d = decidability(clean, gold, torch.tensor([[2, 1], [2, 1], [2, 1]]), lens)
    approx = lambda a, b: all(abs(x - y) < 1e-6 for x, y in zip(a, b)) and len(a) == len(b)  # noqa: E731
    assert approx(d["acc_after_n_steps"], [2 / 3, 2 / 3, 1.0])
    # reference (first early-exit read-out that is correct): rows 0 and 2 at 0, row 1 at 1
    assert approx(d["first_correct_hist"], [2 / 3, 1 / 3, 0.0]) and d["first_correct_never"] == 0.0
    # stricter second metric: row 2 is wrong again at 1, so it stays right only from 2
    assert approx(d["stable_correct_hist"], [1 / 3, 1 / 3, 1 / 3]) and d["stable_correct_never"] == 0.0
    assert approx(d["logit_lens_acc"], [2 / 3, 1 / 3])
    never = decidability(_roll(_onehot_logits(torch.zeros(3, 3, dtype=torch.long))), gold,
                         torch.zeros(3, 2, dtype=torch.long), lens)
    assert never["first_correct_never"] == 1.0 and sum(never["first_correct_hist"]) == 0.0


def _trajectories():
    """Three questions, 40 samples each, K = 3 latents in d = 4. q0: 22 A / 18 B, A-trajectories drift
    along +e0 and B along -e0 from a common offset, more at each step (two-way: selected). q1: 36 / 4
    (ratio 0.1: too one-sided). q2: 14 / 13 / 13 over three answers (top two cover 68 %: not two-way;
    the old filter, second share >= 0.15, kept it)."""
    S, K, d = 40, 3, 4
    g = torch.Generator().manual_seed(0)
    answers = torch.zeros(3, S, dtype=torch.long)
    answers[0, 22:] = 1
    answers[1, 36:] = 1
    answers[2, 14:27], answers[2, 27:] = 1, 2
    base = torch.tensor([0.0, 1.0, 2.0, 0.5])
    latents = base + 0.01 * torch.randn(3, S, K, d, generator=g)
    latents[..., 3] += torch.arange(K) * 2.0            # the chain moves (activity)
    sign = torch.where(answers[0] == 0, 1.0, -1.0)
    latents[0, :, :, 0] += sign[:, None] * torch.tensor([0.0, 0.5, 1.0])
    return latents, answers


def test_answer_modes_reference_selection_and_per_question_probe():
    from analyses.latent_cot import answer_modes_from_samples, select_questions
    latents, answers = _trajectories()
    chosen = select_questions(answers, latents)
    assert [c["question"] for c in chosen] == [0]
    assert chosen[0]["A"] == 0 and chosen[0]["B"] == 1 and chosen[0]["ratio_B"] == pytest.approx(18 / 40)
    K, V = 3, 5
    logits = torch.zeros(3, K + 1, V)
    logits[0, :, 0] = torch.tensor([-1.0, 0.0, 1.0, 2.0])      # the read-out moves to A after 2 latents
    for method in ("gram_schmidt", "mean_sub"):
        res = answer_modes_from_samples(latents, answers, logits, method=method)
        assert res["n_questions"] == 1 and res["n_degenerate_probes"] == 0
        o = res["output_commitment"]
        assert o[0] < 0.5 and o[1] == pytest.approx(0.5) and o[2] > 0.5 and res["output_commit_step"] == [2]
        ra, rb = res["representational_commitment_A"], res["representational_commitment_B"]
        # the question's own A- and B-trajectories agree at step 1 and separate more at every step
        assert abs(ra[0] - rb[0]) < 0.01 and ra[2] - rb[2] > ra[1] - rb[1] > 0.15
    # mean_sub: probe +-unit(mu_A - c), centred on the midpoint: undecided (0.5) at step 1, A from step 2 on
    assert ra[0] == pytest.approx(0.5, abs=0.01) and rb[0] == pytest.approx(0.5, abs=0.01)
    assert ra[2] > ra[1] > 0.7 and rb[2] < rb[1] < 0.3 and res["representational_commit_step"] == [1]


def test_answer_modes_without_a_qualifying_question_reports_no_curve():
    from analyses.latent_cot import answer_modes_from_samples
    latents, answers = _trajectories()
    res = answer_modes_from_samples(latents[1:], answers[1:], torch.zeros(2, 4, 5))
    assert res["n_questions"] == 0 and "No question qualifies" in res["note"]
    assert res["output_commitment"] == [] and res["representational_commitment_A"] == []
    same = latents[:1].clone()
    same[:] = same[0, 0]                                        # every trajectory the same: probe undefined
    same[..., 3] += torch.arange(3) * 2.0
    res = answer_modes_from_samples(same, answers[:1], torch.zeros(1, 4, 5))
    assert res["n_questions"] == 1 and res["n_degenerate_probes"] == 1
    assert res["representational_commitment_A"] == [] and "probe is undefined" in res["note"]
