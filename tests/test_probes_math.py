"""Hand computations for geometry, attention entropy, lens and knowledge-entropy math."""
import math

import numpy as np
import pytest
import torch

import probes
from probes.entropy import CoefficientAccumulator
from probes.lens import lens_from_hidden


def centred_orthonormal(n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, k, generator=g, dtype=torch.float64)
    A = A - A.mean(0)
    Q, _ = torch.linalg.qr(A)
    return Q  # columns orthonormal and orthogonal to the ones vector


def test_rankme_equals_k_for_isotropic_k_dim_data():
    n, k = 50, 7
    X = centred_orthonormal(n, k) * math.sqrt(n) * 2.0
    X = torch.cat([X, torch.zeros(n, 5, dtype=torch.float64)], 1)
    assert probes.rankme(X, eps=0.0) == pytest.approx(7.0, rel=1e-9)
    assert probes.rankme(X) == pytest.approx(7.0, rel=1e-4)       # the reference's eps = 1e-7


def test_rankme_hand_spectrum():
    n = 40
    lam = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    X = centred_orthonormal(n, 4, seed=1) * torch.sqrt(lam * n)
    p = lam / lam.sum()
    expected = math.exp(-(p * p.log()).sum().item())
    assert probes.rankme(X, eps=0.0) == pytest.approx(expected, rel=1e-9)


def test_alpha_req_recovers_power_law():
    n, k, alpha = 160, 120, 1.3
    lam = torch.arange(1, k + 1, dtype=torch.float64) ** -alpha
    X = centred_orthonormal(n, k, seed=2) * torch.sqrt(lam * n)
    assert probes.alpha_req(X) == pytest.approx(alpha, rel=1e-6)
    assert probes.alpha_req(X.float().numpy()) == pytest.approx(alpha, rel=1e-3)
    assert probes.alpha_req(X, ranks=None, weights="uniform") == pytest.approx(alpha, rel=1e-6)


def test_alpha_req_reference_fit_on_sampled_power_law():
    """Gaussian rows with covariance spectrum i^-1 (d = 512): the sample spectrum bends at the tail, so
    the old fit (every eigenvalue, unweighted) is off by > 0.3 and drifts with N; the reference fit
    (ranks 12-100, weights 1/rank) stays within 0.06 of the true alpha = 1 at every N."""
    g = torch.Generator().manual_seed(0)
    d, alpha = 512, 1.0
    lam = torch.arange(1, d + 1, dtype=torch.float64) ** -alpha
    for n in (300, 1000):
        X = torch.randn(n, d, generator=g, dtype=torch.float64) * lam.sqrt()
        assert abs(probes.alpha_req(X) - alpha) < 0.06
        assert abs(probes.alpha_req(X, ranks=None, weights="uniform") - alpha) > 0.3
    with pytest.raises(ValueError, match=r"ranks \(12, 100\).*has 9.*ranks=\(1, 9\)"):
        probes.alpha_req(torch.randn(10, 40, generator=g))
    with pytest.raises(ValueError, match="weights must be"):
        probes.alpha_req(X, weights="sqrt")


def test_rankme_variants_garrido_singular_values_and_covariance_eigenvalues():
    """Garrido et al. (arXiv 2210.02885) take the entropy of the singular values, Li et al.
    (arXiv 2509.23024) of the covariance eigenvalues (their squares): spectrum sigma = (4, 2, 1, 1)
    gives exp(H(4,2,1,1 / 8)) = 3.36 against exp(H(16,4,1,1 / 22)) = 2.28."""
    from probes.geometry import rankme_covariance, rankme_garrido
    n = 40
    sigma = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    X = centred_orthonormal(n, 4, seed=1) * sigma * math.sqrt(n)    # singular values sigma * sqrt(n)

    def erank(v):
        p = v / v.sum()
        return math.exp(-(p * p.log()).sum().item())
    assert rankme_garrido(X, eps=0.0) == pytest.approx(erank(sigma), rel=1e-9)
    assert rankme_covariance(X, eps=0.0) == pytest.approx(erank(sigma ** 2), rel=1e-9)
    assert rankme_garrido(X) == pytest.approx(3.364, abs=1e-3) and rankme_covariance(X) == pytest.approx(2.276, abs=1e-3)
    assert probes.rankme(X) == rankme_covariance(X)


def test_geometry_errors():
    with pytest.raises(ValueError, match="N >= 2"):
        probes.rankme(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="identical"):
        probes.rankme(torch.ones(5, 4))
    bad = torch.randn(5, 3)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        probes.alpha_req(bad)


def test_attention_entropy_uniform_and_padding():
    # batch of 2, 1 head, 3 keys; row 0 fully real, row 1 left-padded by one token
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    pat = torch.zeros(2, 1, 3, 3)
    pat[0, 0] = torch.tensor([[1, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]])
    # padded query row (garbage) and leaked weight on the padded key: both must be excluded
    pat[1, 0] = torch.tensor([[0.3, 0.3, 0.4], [0.2, 0.8, 0.0], [0.1, 0.45, 0.45]])
    s, n = probes.pattern_entropy(pat, mask)
    assert n == 5
    expected = 0 + math.log(2) + math.log(3) + 0 + math.log(2)
    assert float(s[0]) == pytest.approx(expected, abs=1e-9)


def test_attention_entropy_shape_errors():
    with pytest.raises(ValueError, match="B, H, Tq, Tk"):
        probes.pattern_entropy(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="mask"):
        probes.pattern_entropy(torch.zeros(2, 1, 3, 3), torch.ones(2, 4))


def test_lens_math_with_identity_unembedding():
    hidden = torch.tensor([[[0.0, 0.0]], [[math.log(3.0), 0.0]], [[5.0, 5.0]]])  # [L=3, N=1, d=2]
    final = torch.tensor([[math.log(3.0), 0.0]])                                # p = (3/4, 1/4)
    res = lens_from_hidden(hidden, lambda h: h, final)
    p_final = torch.tensor([0.75, 0.25], dtype=torch.float64)
    h_final = -(p_final * p_final.log()).sum()
    assert float(res.entropy[0]) == pytest.approx(math.log(2), abs=1e-6)
    kl0 = (p_final * (p_final.log() - math.log(0.5))).sum()
    assert float(res.kl_to_final[0]) == pytest.approx(float(kl0), abs=1e-6)
    assert float(res.kl_to_final[1]) == pytest.approx(0.0, abs=1e-7)
    # the last layer is the model's own distribution, not unembed(hidden[-1]) (uniform here)
    assert float(res.entropy[2]) == pytest.approx(float(h_final), abs=1e-6)
    assert float(res.kl_to_final[2]) == 0.0
    assert res.log_probs.shape == (3, 1, 2)
    normed = lens_from_hidden(hidden, lambda h: h, final, norm_fn=lambda h: 2 * h)
    assert normed.norm and float(normed.entropy[0]) == pytest.approx(math.log(2), abs=1e-6)


def test_knowledge_entropy_uniform_is_log_m():
    m = 37
    H = probes.entropy_from_coefficients(torch.ones(4, m) * 0.3)
    np.testing.assert_allclose(H.numpy(), np.full(4, math.log(m)), rtol=1e-12)
    H2 = probes.entropy_from_coefficients(torch.tensor([[1.0, 3.0]]))
    assert float(H2[0]) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    with pytest.raises(ValueError, match="non-negative"):
        probes.entropy_from_coefficients(torch.tensor([[1.0, -1.0]]))


def test_coefficient_accumulator_excludes_padding_and_averages_per_sequence():
    acc = CoefficientAccumulator(1, 2)
    hidden = torch.tensor([[[9.0, 9.0], [1.0, -3.0], [3.0, 1.0]],     # left pad, then 2 tokens
                           [[2.0, 2.0], [-4.0, 0.0], [0.0, 2.0]]])    # 3 real tokens
    real = torch.tensor([[False, True, True], [True, True, True]])
    acc.add(0, hidden, real)
    ke = acc.result()
    seq0 = np.array([2.0, 2.0])                  # mean |.| of (1,-3),(3,1)
    seq1 = np.array([6.0, 4.0]) / 3              # mean |.| of (2,2),(-4,0),(0,2)
    np.testing.assert_allclose(ke.coefficients[0].numpy(), (seq0 + seq1) / 2, rtol=1e-6)
    assert ke.n_tokens == 5 and ke.n_texts == 2
