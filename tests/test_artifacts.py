"""One artifact module (hooked.artifacts) and one undo-handle base (hooked.UndoHandle) for every package.

Each saved kind -- ActivationSet, probe, SteeringVector, TinyReasoner -- round-trips, and a corrupted
safetensors file, a corrupted JSON file, a foreign format tag or a missing file all raise the library's
ArtifactError (never a raw SafetensorError or JSONDecodeError).
"""
import json
import shutil

import numpy as np
import pytest
import torch

import hooked
import interventions
import probes
from analyses.latent_cot.model import ReasonerConfig, TinyReasoner
from hooked.artifacts import ArtifactError, ArtifactNotFoundError


def save_activations(d):
    acts = hooked.ActivationSet({"resid_post.0": torch.randn(3, 8)}, ["a", "b", "c"], "last")
    acts.save(d)
    return d, "shard-00000.safetensors", "activations.json", hooked.ActivationSet.load


def save_probe(d):
    y = np.arange(40) % 2
    X = np.random.default_rng(0).normal(size=(40, 5)) + np.outer(y, [2, 0, 0, 0, 0])
    probes.save_probe(probes.LinearProbe("mass_mean").fit(X, y), d, site="resid_post.1")
    return d, "probe.safetensors", "probe.json", probes.load_probe


def save_steering(d):
    interventions.SteeringVector({"resid_post.0": torch.randn(8)}).save(d)
    return d, "steering.safetensors", "steering.json", interventions.SteeringVector.load


def save_reasoner(d):
    TinyReasoner(ReasonerConfig(d_model=16, n_layers=1, n_heads=2, d_mlp=32)).save(d)
    return d, "model.safetensors", "config.json", TinyReasoner.load


KINDS = {"activations": save_activations, "probe": save_probe, "steering": save_steering, "reasoner": save_reasoner}


@pytest.mark.parametrize("kind", list(KINDS))
def test_roundtrip_writes_format_tag_and_version(tmp_path, kind):
    d, _, meta_name, load = KINDS[kind](tmp_path / kind)
    meta = json.loads((d / meta_name).read_text())
    assert meta["format"].startswith("policylens.") and meta["library_version"]
    load(d)


@pytest.mark.parametrize("kind", list(KINDS))
def test_corrupted_safetensors_is_an_artifact_error(tmp_path, kind):
    d, tensors, _, load = KINDS[kind](tmp_path / kind)
    data = (d / tensors).read_bytes()
    (d / tensors).write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(ArtifactError, match="not a readable safetensors"):
        load(d)
    (d / tensors).write_bytes(b"\x00" * 64)  # not safetensors at all
    with pytest.raises(ArtifactError, match="not a readable safetensors"):
        load(d)


@pytest.mark.parametrize("kind", list(KINDS))
def test_corrupted_json_is_an_artifact_error(tmp_path, kind):
    d, _, meta_name, load = KINDS[kind](tmp_path / kind)
    (d / meta_name).write_text('{"format": "policylens.')
    with pytest.raises(ArtifactError, match="JSON is corrupted"):
        load(d)


@pytest.mark.parametrize("kind", list(KINDS))
def test_foreign_file_is_an_artifact_error(tmp_path, kind):
    d, tensors, meta_name, load = KINDS[kind](tmp_path / kind)
    other = "probe" if kind != "probe" else "steering"
    src, src_tensors, src_meta, _ = KINDS[other](tmp_path / other)
    shutil.copy(src / src_meta, d / meta_name)  # another artifact's metadata under this name
    with pytest.raises(ArtifactError, match="format tag"):
        load(d)
    (d / meta_name).write_text(json.dumps({"something": "else"}))  # a JSON from elsewhere
    with pytest.raises(ArtifactError, match="format tag is None"):
        load(d)


@pytest.mark.parametrize("kind", list(KINDS))
def test_missing_file_names_it(tmp_path, kind):
    d, tensors, _, load = KINDS[kind](tmp_path / kind)
    (d / tensors).unlink()
    with pytest.raises(ArtifactNotFoundError, match=tensors):
        load(d)
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError, as before
        load(tmp_path / "nowhere")


def test_every_undo_handle_shares_the_base():
    from interventions.ablation import WeightEdit
    from probes.resuscitate import Resuscitation

    for cls in (hooked.HookHandle, interventions.SteeringHandle, interventions.SAEHandle, WeightEdit, Resuscitation):
        assert issubclass(cls, hooked.UndoHandle), cls


def test_undo_handles_are_idempotent_context_managers():
    model = hooked.tiny_model("llama")
    vec = interventions.SteeringVector({"resid_post.0": torch.ones(model.d_model)})
    before = [p.detach().clone() for p in model.hf_model.parameters()]
    handles = [
        model.hooks({"resid_post.0": lambda act, ctx: act}),
        vec.apply(model, multiplier=2.0),
        interventions.orthogonalize_weights(model, torch.ones(model.d_model)),
        probes.resuscitate(model, coefficients=torch.rand(model.n_layers, model.d_mlp) + 0.1),
    ]
    for h in handles:
        assert h.active
        with h:
            pass
        assert not h.active
        h.remove()  # idempotent
        assert not h.active
    assert not model._hooks
    for p, q in zip(model.hf_model.parameters(), before):
        assert torch.equal(p, q)
