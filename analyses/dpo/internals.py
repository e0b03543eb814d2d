"""Per-layer internals of a (reference, policy) pair on the same inputs.

Both models are ``hooked.HookedModel``s of one architecture and tokenizer (checked by the caller), so the
same prompt gives the same tokens in both and activations can be compared row by row.
"""
from __future__ import annotations

import numpy as np
import torch

import probes


def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited", Eq. 5):
    with column-centred X [N, d1], Y [N, d2], ``CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)``.
    1 for representations equal up to rotation and isotropic scaling."""
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"linear_cka needs the same rows in X and Y; got {X.shape[0]} and {Y.shape[0]}.")
    X = X.double() - X.double().mean(0)
    Y = Y.double() - Y.double().mean(0)
    # the N x N Gram form is cheaper than d x d when N < d, and identical in value
    kx, ky = X @ X.T, Y @ Y.T
    den = (kx.norm() * ky.norm()).item()
    if den == 0:
        raise ValueError("linear_cka is undefined for a representation with zero variance.")
    return float((kx * ky).sum().item() / den)


def _resid(model, prompts, positions, batch_size, progress) -> torch.Tensor:
    acts = model.capture(prompts, sites="resid_post.*", positions=positions, batch_size=batch_size,
                         progress=progress)
    return acts.stack("resid_post.*").float()  # [L, N, d]


def representation_similarity(reference, policy, prompts, positions="all", batch_size=8, progress=None,
                              acts=None) -> dict:
    """Per layer: linear CKA and the mean cosine between the two models' ``resid_post.L`` on the same
    tokens (``positions="all"``: every real token of every prompt), plus the mean relative change
    ``||h_pi - h_ref|| / ||h_ref||``."""
    hr, hp = acts if acts is not None else (_resid(reference, prompts, positions, batch_size, progress),
                                            _resid(policy, prompts, positions, batch_size, progress))
    cka, cos, rel = [], [], []
    for L in range(hr.shape[0]):
        cka.append(linear_cka(hr[L], hp[L]))
        cos.append(torch.nn.functional.cosine_similarity(hr[L].double(), hp[L].double(), dim=-1).mean().item())
        rel.append(((hp[L] - hr[L]).norm(dim=-1) / hr[L].norm(dim=-1).clamp_min(1e-12)).mean().item())
    return {"positions": positions, "n_rows": int(hr.shape[1]), "cka": cka, "cosine": cos,
            "relative_change": rel}


def lens_kl(reference, policy, prompts, batch_size=8, progress=None) -> dict:
    """Logit lens (nostalgebraist 2020) at every layer of both models at each prompt's last token, with
    ``KL_L = mean_x KL(lens_pi,L(x) || lens_ref,L(x))``, ``lens_L = softmax(W_U norm(h_L))``; the last layer
    is each model's own output distribution. Also each model's lens entropy per layer."""
    lr = probes.logit_lens(reference, prompts, positions="last", batch_size=batch_size, progress=progress)
    lp = probes.logit_lens(policy, prompts, positions="last", batch_size=batch_size, progress=progress)
    a, b = lp.log_probs.double(), lr.log_probs.double()
    kl = (a.exp() * (a - b)).sum(-1).clamp_min(0)  # [L, N]
    return {"kl": kl.mean(1).tolist(), "entropy_reference": lr.entropy.tolist(),
            "entropy_policy": lp.entropy.tolist(), "n_prompts": len(prompts)}


def knowledge_entropy(reference, policy, texts, batch_size=8, progress=None) -> dict:
    """Knowledge entropy (Kim et al. 2024, Eq. 2, via ``probes.knowledge_entropy``) of both models."""
    kr = probes.knowledge_entropy(reference, texts, batch_size=batch_size, progress=progress)
    kp = probes.knowledge_entropy(policy, texts, batch_size=batch_size, progress=progress)
    return {"reference": kr.per_layer.tolist(), "policy": kp.per_layer.tolist(),
            "reference_total": float(kr.total), "policy_total": float(kp.total)}


def _split(ds, seed: int):
    """Half of the groups (or examples) for fitting, the rest for testing; both classes in each."""
    rng = np.random.default_rng(seed)
    keys = ds.groups if ds.groups is not None else np.arange(len(ds))
    uniq = np.unique(keys)
    rng.shuffle(uniq)
    train_keys = set(uniq[: len(uniq) // 2].tolist())
    train = np.array([k in train_keys for k in keys])
    return np.where(train)[0], np.where(~train)[0]


def probe_transfer(reference, policy, datasets=("factual",), n: int | None = 160, method="logistic",
                   batch_size=16, seed=0, progress=None) -> dict:
    """Concept-probe transfer (after Du et al. 2025, "How Post-Training Reshapes LLMs"): per layer, fit a
    ``probes.LinearProbe`` on one model's ``resid_post.L`` (last token) on a train split, report its test
    accuracy on its own model and on the other model's activations of the same texts, and the cosine between
    the two models' probe directions. Directions that stay aligned and transfer mean the concept's linear
    representation survived post-training."""
    out = {}
    for name in datasets:
        ds = probes.datasets.load(name, n=n, seed=seed)
        tr, te = _split(ds, seed)
        hr = _resid(reference, ds.texts, "last", batch_size, progress)
        hp = _resid(policy, ds.texts, "last", batch_size, progress)
        y = ds.labels
        rows = {k: [] for k in ("ref_on_ref", "ref_on_policy", "policy_on_policy", "policy_on_ref", "cosine")}
        for L in range(hr.shape[0]):
            pr = probes.LinearProbe(method=method).fit(hr[L][tr], y[tr])
            pp = probes.LinearProbe(method=method).fit(hp[L][tr], y[tr])
            rows["ref_on_ref"].append(pr.score(hr[L][te], y[te]))
            rows["ref_on_policy"].append(pr.score(hp[L][te], y[te]))
            rows["policy_on_policy"].append(pp.score(hp[L][te], y[te]))
            rows["policy_on_ref"].append(pp.score(hr[L][te], y[te]))
            rows["cosine"].append(float(torch.dot(pr.direction_.double(), pp.direction_.double())))
        rows.update(n_train=int(len(tr)), n_test=int(len(te)), method=method)
        out[name] = rows
    return out


def geometry(reference, policy, prompts=None, batch_size=8, progress=None, acts=None) -> dict:
    """RankMe (Garrido et al. 2023) and alpha-ReQ (Agrawal et al. 2022) of ``resid_post.L`` of both models
    per layer, via ``probes.rankme`` / ``probes.alpha_req`` (as used by Li et al. 2025 to call SFT/DPO
    "entropy-seeking": a higher RankMe / lower alpha-ReQ means a flatter eigenspectrum)."""
    hr, hp = acts if acts is not None else (_resid(reference, prompts, "all", batch_size, progress),
                                            _resid(policy, prompts, "all", batch_size, progress))
    out = {"rankme_reference": [], "rankme_policy": [], "alpha_req_reference": [], "alpha_req_policy": []}
    for L in range(hr.shape[0]):
        out["rankme_reference"].append(probes.rankme(hr[L]))
        out["rankme_policy"].append(probes.rankme(hp[L]))
        out["alpha_req_reference"].append(probes.alpha_req(hr[L]))
        out["alpha_req_policy"].append(probes.alpha_req(hp[L]))
    out["n_rows"] = int(hr.shape[1])
    return out


def per_layer_internals(reference, policy, prompts, texts=None, probe_datasets=("factual",),
                        probe_n: int | None = 160, batch_size=8, seed=0, progress=None) -> dict:
    """Every per-layer measure above; ``prompts`` for representation / lens / geometry, ``texts`` (default:
    the prompts) for knowledge entropy. Activations on all tokens are captured once and shared."""
    acts = (_resid(reference, prompts, "all", batch_size, progress),
            _resid(policy, prompts, "all", batch_size, progress))
    out = {"representation": representation_similarity(reference, policy, prompts, acts=acts),
           "lens": lens_kl(reference, policy, prompts, batch_size, progress),
           "knowledge_entropy": knowledge_entropy(reference, policy, texts or prompts, batch_size, progress),
           "geometry": geometry(reference, policy, acts=acts)}
    if probe_datasets:
        out["probe_transfer"] = probe_transfer(reference, policy, probe_datasets, probe_n, seed=seed,
                                               batch_size=batch_size, progress=progress)
    return out
