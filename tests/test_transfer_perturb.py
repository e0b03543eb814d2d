"""Cross-model direction transfer (analyses.transfer) and latent-perturbation sensitivity
(analyses.perturbation): known answers on tiny models and constructed activations."""
from __future__ import annotations

import copy

import pytest
import torch

import hooked
from analyses import perturbation as PT
from analyses import transfer as TR
from analyses import transfer_report as TRR
from hooked.model import HookedModel

PROMPTS = ["The capital of France is", "Water is made of", "The number after seven is", "My favourite colour is"]


# ------------------------------------------------------------------------------------------ helpers
def embedded_copy(hf, tok, d_t: int, seed: int = 0):
    """A Llama whose residual stream is exactly ``h_source @ Q`` at every layer, with ``Q`` ``[d_s, d_t]``
    orthonormal rows: readers ``W -> W Q``, writers ``W -> Q^T W``, RMSNorm weights ``sqrt(d_s/d_t)`` and
    eps scaled by ``d_s/d_t`` (needs the source's norm weights to be ones, as a fresh HF init has)."""
    from transformers import LlamaForCausalLM

    cfg = copy.deepcopy(hf.config)
    d_s = cfg.hidden_size
    q, _ = torch.linalg.qr(torch.randn(d_t, d_s, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    Q = q.T.float().contiguous()
    cfg.hidden_size, cfg.rms_norm_eps = d_t, cfg.rms_norm_eps * d_s / d_t
    new = {}
    for k, w in hf.state_dict().items():
        if "norm.weight" in k:
            assert torch.equal(w, torch.ones_like(w)), k
            new[k] = torch.full((d_t,), (d_s / d_t) ** 0.5)
        elif k in ("model.embed_tokens.weight", "lm_head.weight") or any(
                s in k for s in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")):
            new[k] = w @ Q
        elif any(s in k for s in ("o_proj", "down_proj")):
            new[k] = Q.T @ w
        else:
            new[k] = w
    tgt = LlamaForCausalLM(cfg).eval()
    tgt.load_state_dict(new)
    return HookedModel(tgt, tok, "tl", name=f"tiny-embedded-{d_t}"), Q


@pytest.fixture(scope="module")
def pair():
    src = hooked.tiny_model("llama", seed=0, n_layers=3, d_model=64)
    hf, tok = hooked.tiny_hf_model("llama", seed=0, n_layers=3, d_model=64)
    tgt, Q = embedded_copy(hf, tok, 80)
    return src, tgt, Q


@pytest.fixture(scope="module")
def tiny():
    return hooked.tiny_model("llama", seed=1, n_layers=3, d_model=64)


# ------------------------------------------------------------------------------------------ transfer
def test_embedded_copy_is_exact(pair):
    src, tgt, Q = pair
    a, b = src.capture(PROMPTS, "resid_post.*"), tgt.capture(PROMPTS, "resid_post.*")
    for l in range(3):
        torch.testing.assert_close(a[f"resid_post.{l}"] @ Q, b[f"resid_post.{l}"], atol=1e-6, rtol=1e-5)


def test_fit_map_recovers_an_exact_linear_map():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 16, generator=g, dtype=torch.float64)
    A = torch.randn(16, 24, generator=g, dtype=torch.float64)
    c = torch.randn(24, generator=g, dtype=torch.float64)
    m = TR.fit_map(X, X @ A + c, alphas=(1e-10,))
    torch.testing.assert_close(m.coef, A, atol=1e-6, rtol=1e-6)
    v = torch.randn(16, generator=g, dtype=torch.float64)
    torch.testing.assert_close(m.transfer(v).double(), v @ A, atol=1e-4, rtol=1e-5)
    Xt = torch.randn(20, 16, generator=g, dtype=torch.float64)
    assert m.r2(Xt, Xt @ A + c) == pytest.approx(1.0, abs=1e-9)


def test_rank_sweep_is_monotone_and_exact_at_the_true_rank():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(300, 20, generator=g, dtype=torch.float64)
    A = torch.randn(20, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 30, generator=g, dtype=torch.float64)
    Y = X @ A
    m = TR.fit_map(X, Y, alphas=(1e-10,))
    assert m.max_rank == 4
    v = torch.randn(20, generator=g, dtype=torch.float64)
    errs = [float((m.transfer(v, r).double() - v @ A).norm() / (v @ A).norm()) for r in range(1, 7)]
    r2s = [m.r2(X, Y, r) for r in range(1, 7)]
    assert all(b <= a + 1e-9 for a, b in zip(errs, errs[1:])), errs
    assert all(b >= a - 1e-12 for a, b in zip(r2s, r2s[1:])), r2s
    assert errs[0] > 0.1 and errs[3] < 1e-5 and r2s[3] == pytest.approx(1.0, abs=1e-9)


def test_transferred_vector_equals_native_through_an_exact_embedding(pair):
    src, tgt, Q = pair
    res = TR.run_transfer(src, tgt, source_layer=1, target_layer=1, align_prompts=TR.alignment_prompts(130),
                          n_align=130, eval_prompts=PROMPTS[:3], ranks=(2, None), n_sweep=(), n_random=3,
                          multipliers=(-2.0, 0.0, 2.0), alphas=(1e-10,), threads=1)
    assert res.source_site == "resid_post.1" and res.target_site == "resid_post.1"
    assert res.cosine_transferred_native > 0.9999
    assert res.transferred_own_norm["norm"] == pytest.approx(res.native["norm"], rel=1e-3)
    assert res.transferred["mean"] == pytest.approx(res.native["mean"], rel=1e-3, abs=1e-6)
    assert res.r2_test["full"] == pytest.approx(1.0, abs=1e-6)
    assert res.by_rank[0]["rank"] == 2 and res.by_rank[0]["cosine_native"] < res.by_rank[1]["cosine_native"]
    d = res.to_dict()
    assert d["native"]["n"] == 3 and len(d["random"]["slopes"]) == 3


def test_random_direction_of_equal_norm_steers_less(tiny):
    m = tiny
    last = m.n_layers - 1
    site = f"resid_post.{last}"
    W = m.hf_model.lm_head.weight.detach()
    pos, neg = m.tokenizer(" good")["input_ids"][-1], m.tokenizer(" bad")["input_ids"][-1]
    h = m.capture(PROMPTS, site)[site]
    v = (W[pos] - W[neg]).float()
    v = v / v.norm() * float(h.norm(dim=-1).mean())
    eff = TR.steering_effect(m, site, v, PROMPTS, " good", " bad", (-1.0, 0.0, 1.0))
    rand = [TR.steering_effect(m, site, TR.random_like(v, s), PROMPTS, " good", " bad", (-1.0, 0.0, 1.0))["mean"]
            for s in range(5)]
    assert TR.random_like(v, 3).norm() == pytest.approx(float(v.norm()), rel=1e-5)
    assert eff["mean"] > 0 and all(abs(r) < eff["mean"] for r in rand), (eff["mean"], rand)


def test_transfer_bad_input(pair):
    src, tgt, _ = pair
    X, Y = torch.randn(10, 64), torch.randn(9, 80)
    with pytest.raises(ValueError, match="10 Source rows and 9 Target rows"):
        TR.fit_map(X, Y)
    m = TR.fit_map(torch.randn(20, 64), torch.randn(20, 80))
    with pytest.raises(ValueError, match="width 64"):
        m.transfer(torch.randn(80))
    with pytest.raises(ValueError, match="same model object"):
        TR.run_transfer(src, src)
    with pytest.raises(ValueError, match="evaluation prompts"):
        TR.run_transfer(src, tgt, eval_prompts=[], align_prompts=TR.alignment_prompts(10))
    with pytest.raises(ValueError, match="shared prompts"):
        TR.run_transfer(src, tgt, align_prompts=["a", "b"])
    with pytest.raises(ValueError, match="depth"):
        TR.depth_layer(src, 1.5)


# ------------------------------------------------------------------------------------------ perturbation
def test_asa_normalize_matches_reference_moments():
    g = torch.Generator().manual_seed(0)
    h, d = torch.randn(3, 50, generator=g) * 4 + 2, torch.randn(3, 50, generator=g)
    out = PT.asa_normalize(d, h)
    torch.testing.assert_close(out.mean(-1), h.mean(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.std(-1), h.std(-1) * d.std(-1) / (d.std(-1) + 1e-6), atol=1e-5, rtol=1e-5)
    z = (d - d.mean(-1, keepdim=True)) / (d.std(-1, keepdim=True) + 1e-6)  # sv/intervent.py, line by line
    torch.testing.assert_close(out, z * h.std(-1, keepdim=True) + h.mean(-1, keepdim=True))


def test_response_nll_matches_plain_hf_with_and_without_a_perturbation(tiny):
    """The NLL of the own response and the perturbation window (last prompt token .. second-to-last
    response token), checked against a plain transformers forward with a PyTorch hook."""
    hf, _ = hooked.tiny_hf_model("llama", seed=1, n_layers=3, d_model=64)
    resp = PT.greedy_responses(tiny, PROMPTS[:2], max_new_tokens=5)
    delta = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    ours_clean = PT.response_nll(tiny, resp)
    ours = PT.response_nll(tiny, resp, layer=1, delta=delta)
    for i in range(2):
        p, r = resp.prompt_ids[i], resp.response_ids[i]
        ids = torch.tensor([p + r])

        def add(module, inp, out, i=i):
            h = out[0] if isinstance(out, tuple) else out
            h = h.clone()
            h[0, len(p) - 1: len(p) + len(r) - 1] += delta[i]
            return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

        for hooked_run, want in ((False, ours_clean[i]), (True, ours[i])):
            handle = hf.model.layers[1].register_forward_hook(add) if hooked_run else None
            try:
                with torch.no_grad():
                    logp = hf(ids).logits[0].log_softmax(-1)
            finally:
                if handle:
                    handle.remove()
            nll = -logp[len(p) - 1: -1].gather(-1, torch.tensor(r)[:, None]).mean()
            assert float(want) == pytest.approx(float(nll), abs=1e-5)
    assert (ours - ours_clean).abs().max() > 1e-4


def test_zero_norm_perturbation_gives_the_unperturbed_nll_exactly(tiny):
    resp = PT.greedy_responses(tiny, PROMPTS, max_new_tokens=4)
    clean = PT.response_nll(tiny, resp)
    zero = PT.response_nll(tiny, resp, layer=2, delta=torch.zeros(len(PROMPTS), 64))
    assert torch.equal(clean, zero)
    att = PT.asa_attack(tiny, resp, 1, torch.zeros(len(PROMPTS), 64))
    assert att["changed"] == [False] * len(PROMPTS)
    assert [s[:len(o)] for s, o in zip(att["steered_ids"], resp.response_ids)] == resp.response_ids


def test_per_layer_profile_and_asa_steps(tiny):
    prof = PT.sensitivity_profile(tiny, PROMPTS, layers=[0, 1, 2], norms=(0.0, 4.0), n_random=2, max_new_tokens=6,
                                  threads=1)
    assert prof.layers == [0, 1, 2] and prof.n_prompts == 4
    for kind in PT.DIRECTIONS:
        assert torch.equal(torch.tensor(prof.delta_nll[kind]["0.0"]), torch.zeros(3, 4))  # exact at zero norm
        big = torch.tensor(prof.delta_nll[kind]["4.0"])
        assert big.shape == (3, 4) and big.abs().max() > 1e-3
    a = prof.asa
    assert len(a["lasr"]) == 3 and all(0 <= x <= 1 for x in a["lasr"])
    assert a["masr"] >= a["pasr"] == max(a["lasr"])  # a prompt broken at the peak layer is broken at some layer
    # ASA perturbations carry the activation's moments, so their norm is close to ||h|| (Eq. 1)
    assert all(0.5 < r < 1.5 for r in prof.extra["relative_asa_norm"])
    d = prof.to_dict()
    assert len(d["summary"]["asa"]["mean"]) == 3
    other = PT.sensitivity_profile(tiny, PROMPTS, layers=[0, 1, 2], norms=(0.0, 4.0), n_random=2, max_new_tokens=6,
                                   asa=False, threads=1)
    diff = PT.compare(prof, other)
    assert diff["random@0.0"]["mean"] == [0.0, 0.0, 0.0]
    torch.testing.assert_close(torch.tensor(diff["asa"]["mean"], dtype=torch.float64), torch.zeros(3, dtype=torch.float64))


def test_perturb_bad_input(tiny):
    with pytest.raises(ValueError, match="No prompts"):
        PT.sensitivity_profile(tiny, [])
    with pytest.raises(ValueError, match="out of range"):
        PT.sensitivity_profile(tiny, PROMPTS, layers=[5])
    with pytest.raises(ValueError, match="Unknown direction"):
        PT.sensitivity_profile(tiny, PROMPTS, directions=["sideways"])
    resp = PT.greedy_responses(tiny, PROMPTS[:2], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"\[2, 64\]"):
        PT.response_nll(tiny, resp, layer=0, delta=torch.zeros(2, 576))
    a = PT.sensitivity_profile(tiny, PROMPTS[:2], layers=[0], n_random=1, max_new_tokens=2, asa=False)
    b = PT.sensitivity_profile(tiny, PROMPTS[:2], layers=[1], n_random=1, max_new_tokens=2, asa=False)
    with pytest.raises(ValueError, match="not comparable"):
        PT.compare(a, b)
    assert not tiny.active_hooks


# ------------------------------------------------------------------------------------------ CLI
def _run_cli(argv):
    import argparse

    from analyses.cli import transfer_perturb

    ap = argparse.ArgumentParser()
    transfer_perturb.register(ap.add_subparsers())
    args = ap.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    dirs = {}
    for name, kw in (("src", dict(seed=0)), ("wide", dict(seed=1, d_model=80, n_heads=5, n_kv_heads=5)),
                     ("deep", dict(seed=2, n_layers=4))):
        d = tmp_path_factory.mktemp(name)
        m, tok = hooked.tiny_hf_model("llama", **kw)
        m.save_pretrained(d)
        tok.save_pretrained(d)
        dirs[name] = str(d)
    return dirs


def test_cli_transfer_and_perturb_write_reports(tiny_dirs, tmp_path):
    import json

    out = tmp_path / "transfer"
    assert _run_cli(["transfer", "--model", tiny_dirs["src"], "--target", tiny_dirs["wide"], "--quick", "--n-align", "40",
                     "--ranks", "2", "0", "--n-random", "2", "--eval-prompts", *PROMPTS[:2], "--out", str(out)]) == 0
    rep = json.loads((out / "transfer.json").read_text())
    assert rep["target_site"] == "resid_post.1" and [r["rank"] for r in rep["by_rank"]] == [2, "full"]
    assert (out / "transfer.png").exists() and "Cross-model" in (out / "transfer.md").read_text()
    out = tmp_path / "perturb"
    assert _run_cli(["perturb", "--model", tiny_dirs["src"], "--policy", tiny_dirs["src"], "--n-prompts", "2",
                     "--layers", "0", "2", "--n-random", "1", "--max-new-tokens", "3", "--out", str(out)]) == 0
    rep = json.loads((out / "perturb.json").read_text())
    assert set(rep) == {"base", "dpo", "policy_minus_base"}  # the same weights twice: the difference is exactly 0
    assert rep["policy_minus_base"]["asa"]["mean"] == [0.0, 0.0]


def test_cli_refuses_mismatched_models(tiny_dirs, tmp_path):
    from analyses.cli.errors import CLIError

    with pytest.raises(CLIError, match="same model"):
        _run_cli(["transfer", "--model", tiny_dirs["src"], "--target", tiny_dirs["src"]])
    with pytest.raises(CLIError, match="4 layers"):
        _run_cli(["perturb", "--model", tiny_dirs["src"], "--policy", tiny_dirs["deep"], "--out", str(tmp_path / "x")])


def test_uniform_r2_weights_every_dimension_equally():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(100, 5, generator=g, dtype=torch.float64)
    # dimension 0 is predictable and huge, dimension 1 is pure noise: variance-weighted R^2 ~ 1, uniform ~ 1/2
    Y = torch.stack([1000 * X[:, 0], torch.randn(100, generator=g, dtype=torch.float64)], 1)
    m = TR.fit_map(X[:80], Y[:80], alphas=(1e-10,))
    assert m.r2(X[80:], Y[80:]) > 0.99
    assert m.r2(X[80:], Y[80:], uniform=True) == pytest.approx(0.5, abs=0.15)


def test_demo_sections_return_numbers_and_markdown(pair, tiny, tmp_path):
    src, tgt, _ = pair
    numbers, md = TRR.demo_section(src, tmp_path / "t", quick=True, target=tgt)
    assert set(numbers) == {"cross_model"} and "![transfer](transfer_cross_model.png)" in md
    assert (tmp_path / "t" / "transfer_cross_model.json").exists()
    numbers, md = TRR.demo_section(src, tmp_path / "t2", quick=True, policy=tgt, pairs=("to_policy",))
    assert set(numbers) == {"to_policy"} and "![transfer](transfer_to_policy.png)" in md
    with pytest.raises(ValueError, match="no policy was given"):
        TRR.demo_section(src, tmp_path / "t3", quick=True, pairs=("to_policy",))
    numbers, md = PT.demo_section(tiny, tmp_path / "p", quick=True, policy=tiny, prompts=PROMPTS[:2])
    assert set(numbers) == {"base", "dpo", "policy_minus_base"} and "![perturbation](perturb.png)" in md
    assert numbers["base"]["layers"] == [0, 2]  # every third layer and the last
