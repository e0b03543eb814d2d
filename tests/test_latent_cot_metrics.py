"""Step-wise metrics on hand-built rollouts with known answers."""
import math

import torch

from analyses.latent_cot import answer_modes, decidability, influence_matrix, necessity
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


def test_decidability_earliest_correct_step():
    gold = torch.tensor([1, 1, 1])
    reads = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 1]])     # after 0, 1, 2 steps
    clean = _roll(_onehot_logits(reads))
    lens = _onehot_logits(torch.tensor([[2, 1], [2, 0], [0, 0]]))
    d = decidability(clean, gold, torch.tensor([[2, 1], [2, 1], [2, 1]]), lens)
    approx = lambda a, b: all(abs(x - y) < 1e-6 for x, y in zip(a, b)) and len(a) == len(b)  # noqa: E731
    assert approx(d["acc_after_n_steps"], [2 / 3, 2 / 3, 1.0])
    # row 0 right from 0 on; row 1 from 1; row 2 wrong at 1, so it stays right only from 2
    assert approx(d["earliest_correct_hist"], [1 / 3, 1 / 3, 1 / 3]) and d["never_correct"] == 0.0
    assert approx(d["logit_lens_acc"], [2 / 3, 1 / 3])


def test_answer_modes_find_the_bimodal_question():
    K, V = 2, 5
    logits = torch.full((4, K + 1, V), -20.0)
    logits[:, :, 0] = 5.0                                   # three confident questions answer 0
    logits[3] = -20.0
    logits[3, :, 1] = torch.tensor([-1.0, 0.5, 1.0])       # question 3: answers 1 and 2 compete, 1 wins late
    logits[3, :, 2] = torch.tensor([1.0, 0.0, 0.0])
    lat = torch.randn(4, K, 4, generator=torch.Generator().manual_seed(0))
    res = answer_modes(_roll(logits, lat), n_samples=200, min_share=0.15)
    assert res["n_questions"] == 1 and not res["relaxed"]
    o = res["output_commitment"]
    assert o[0] < 0.5 < o[1] < o[2]                          # commits to answer 1 after one step
    assert res["output_commit_step"] == [1]
