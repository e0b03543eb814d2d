"""Activation patching on tiny random models: 100 % at the last layer, 0 % for nothing,
position-by-position sweep, cross-model patching, heatmap, bad input."""

import pytest
import torch

import hooked
import interventions as iv

CLEAN = ["The cat sat on the mat", "A dog ran in the park"]
CORRUPT = ["The cat sat on the rug", "A dog ran in the yard"]


@pytest.fixture(scope="module")
def model():
    m = hooked.tiny_model("llama", seed=0, n_layers=2)
    with torch.no_grad():
        for p in m.hf_model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return m


def _answers(model):
    # the clean run's top token vs the corrupted run's top token at the last position
    enc_c, enc_k = model.tokenize(CLEAN), model.tokenize(CORRUPT)
    good = model.forward(enc_c["input_ids"], enc_c["attention_mask"])[:, -1].argmax(-1).tolist()
    bad = model.forward(enc_k["input_ids"], enc_k["attention_mask"])[:, -1].argmax(-1).tolist()
    return good, bad


def test_last_layer_all_positions_recovers_everything(model):
    good, bad = _answers(model)
    last = f"resid_post.{model.n_layers - 1}"
    res = iv.activation_patching(model, CLEAN, CORRUPT, [last, "resid_pre.0"], positions="all", answers=(good, bad))
    assert res.recovered.shape == (2, 1)
    assert torch.allclose(res.recovered, torch.ones(2, 1), atol=1e-4)
    assert res.clean_metric > res.corrupted_metric


def test_patching_nothing_recovers_zero(model):
    good, bad = _answers(model)
    metric = lambda logits: float(iv.logit_difference(logits, torch.tensor(good), torch.tensor(bad)).mean())  # noqa: E731
    clean_run = iv.run_clean(model, CLEAN, ["resid_post.1"], metric)
    corrupted = metric(iv.run_patched(model, CORRUPT, clean_run, {}))
    nothing = metric(iv.run_patched(model, CORRUPT, clean_run, {"resid_post.1": []}))
    assert iv.fraction_recovered(nothing, clean_run.metric, corrupted) == 0.0
    everything = metric(iv.run_patched(model, CORRUPT, clean_run, {"resid_post.1": "all"}))
    assert iv.fraction_recovered(everything, clean_run.metric, corrupted) == pytest.approx(1.0, abs=1e-4)


def test_each_position_sweep(model, tmp_path):
    good, bad = _answers(model)
    res = iv.activation_patching(model, CLEAN, CORRUPT, "resid_post.*", positions="each", answers=(good, bad))
    n = int(model.tokenize(CLEAN)["attention_mask"].sum(1).max())
    assert res.recovered.shape == (model.n_layers, n) and res.positions == list(range(n))
    # Only the last token differs between clean and corrupted; positions before it carry identical activations,
    # so patching them changes nothing, and at the last layer only the last position matters (causal model).
    assert torch.allclose(res.recovered[:, :-1], torch.zeros(model.n_layers, n - 1), atol=1e-5)
    assert res.recovered[-1, -1] == pytest.approx(1.0, abs=1e-4)
    # columns batched into one forward == one forward per column
    one_by_one = iv.activation_patching(model, CLEAN, CORRUPT, "resid_post.*", positions="each", answers=(good, bad), max_batch=1)
    assert torch.allclose(one_by_one.recovered, res.recovered, atol=1e-4)
    fig = res.plot()
    fig.savefig(tmp_path / "patch.png")
    assert (tmp_path / "patch.png").stat().st_size > 1000
    assert set(res.to_dict()) >= {"sites", "positions", "recovered", "clean_metric", "corrupted_metric"}


def test_cross_model_patching(model):
    other = hooked.tiny_model("llama", seed=1, n_layers=2)  # same architecture, different weights
    good, bad = _answers(model)
    last = f"resid_post.{model.n_layers - 1}"
    res = iv.activation_patching(other, CLEAN, CORRUPT, last, positions="all", answers=(good, bad), source_model=model)
    assert res.meta["source_model"] == model.name and res.meta["destination_model"] == other.name
    # patched metric = other's final norm + unembedding applied to model's last residual stream
    resid = model.capture(CLEAN, last, positions="last")[last]
    with torch.no_grad():
        logits = other.unembed(other.final_norm_module(resid[:, None, :]))
    want = float(iv.logit_difference(logits.detach(), torch.tensor(good), torch.tensor(bad)).mean())
    assert float(res.patched_metric[0, 0]) == pytest.approx(want, abs=1e-4)
    gpt = hooked.tiny_model("gpt2", seed=0, n_layers=2)
    with pytest.raises(ValueError, match="same architecture"):
        iv.activation_patching(gpt, CLEAN, CORRUPT, "resid_post.0", answers=(good, bad), source_model=model)


def test_bad_input(model):
    good, bad = _answers(model)
    with pytest.raises(ValueError, match="same number of tokens"):
        iv.activation_patching(model, CLEAN, ["The cat sat on the big red rug", "A dog"], "resid_post.0", answers=(good, bad))
    assert model.active_hooks == {}
    with pytest.raises(ValueError, match="as many clean"):
        iv.activation_patching(model, CLEAN, CORRUPT[:1], "resid_post.0", answers=(good, bad))
    with pytest.raises(ValueError, match="answers"):
        iv.activation_patching(model, CLEAN, CORRUPT, "resid_post.0")
    with pytest.raises(ValueError, match="nothing to recover"):
        iv.activation_patching(model, CLEAN, CLEAN, "resid_post.0", answers=(good, bad))
    with pytest.raises(ValueError, match="Unknown site"):
        iv.activation_patching(model, CLEAN, CORRUPT, "resid_side.0", answers=(good, bad))
    with pytest.raises(ValueError, match="outside"):
        iv.activation_patching(model, CLEAN, CORRUPT, "resid_post.0", positions=[99], answers=(good, bad))
    assert model.active_hooks == {}
