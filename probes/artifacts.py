"""Probe directions as data: safetensors (tensors) + JSON (metadata). Loading runs no code.

A saved probe is a directory with ``probe.safetensors`` (coef, intercept, mean, scale,
direction, classes) and ``probe.json`` (model, site, layer, position, method, parameters,
normalisation, class gap, library version). :func:`to_steering` turns one into the
``(site, direction, metadata)`` triple the interventions package consumes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hooked import artifacts

from .linear import LinearProbe

FORMAT = "policylens.probe/1"
_TENSORS = "probe.safetensors"
_META = "probe.json"


def _layer_of(site):
    if site is None:
        return None
    tail = str(site).rsplit(".", 1)[-1]
    return int(tail) if tail.isdigit() else None


def save_probe(probe: LinearProbe, path, *, model=None, site: str | None = None, position="last",
               dataset: str | None = None, extra: dict | None = None) -> Path:
    """Save a fitted :class:`LinearProbe` under directory ``path``; returns the directory."""
    if not isinstance(probe, LinearProbe) or not hasattr(probe, "coef_"):
        raise ValueError("save_probe needs a fitted probes.LinearProbe; call .fit(X, y) first.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {
        "coef": torch.as_tensor(probe.coef_, dtype=torch.float64),
        "intercept": torch.tensor([probe.intercept_], dtype=torch.float64),
        "mean": torch.as_tensor(probe.mean_, dtype=torch.float64),
        "scale": torch.as_tensor(probe.scale_, dtype=torch.float64),
        "direction": probe.direction_.contiguous(),
    }
    artifacts.write_tensors(path / _TENSORS, tensors)
    model_name = model if isinstance(model, str) or model is None else getattr(model, "name", None)
    meta = {
        "model": model_name,
        "site": site,
        "layer": _layer_of(site),
        "position": position if isinstance(position, (str, int)) else str(position),
        "method": probe.method,
        "params": probe.get_params(),
        "classes": [c.item() if hasattr(c, "item") else c for c in probe.classes_],
        "n_features": int(probe.n_features_in_),
        "class_gap": probe.class_gap_,
        "normalisation": {
            "standardized": bool(probe._standardize()),
            "coef_space": "raw activations: decision = x . coef + intercept",
            "direction": "coef / ||coef||_2 (unit L2 norm), raw activation space, points to class 1",
        },
        "dataset": dataset,
        "extra": extra or {},
    }
    artifacts.write_meta(path / _META, meta, FORMAT)
    return path


def load_probe(path):
    """Load a probe saved by :func:`save_probe`: returns ``(LinearProbe, metadata)``."""
    path = artifacts.require(path, _TENSORS, _META, what="probe", writer="probes.save_probe")
    meta = artifacts.read_meta(path / _META, FORMAT, "probe")
    t = artifacts.read_tensors(path / _TENSORS, "probe")
    missing = [k for k in ("coef", "intercept", "mean", "scale") if k not in t]
    if missing or "params" not in meta:
        raise artifacts.ArtifactError(f"{str(path)!r} is an incomplete probe: it lacks {missing or ['params']}.")
    probe = LinearProbe(**meta["params"])
    probe.coef_ = t["coef"].numpy()
    probe.intercept_ = float(t["intercept"][0])
    probe.mean_, probe.scale_ = t["mean"].numpy(), t["scale"].numpy()
    probe.classes_ = np.asarray(meta["classes"])
    probe.n_features_in_ = meta["n_features"]
    probe.class_gap_ = meta["class_gap"]
    return probe, meta


def to_steering(probe, site: str | None = None, *, metadata: dict | None = None):
    """Steering triple ``(site, direction [d] float32 unit norm, metadata)`` from a probe.

    ``probe`` is a fitted :class:`LinearProbe` (then pass ``site``) or a directory saved by
    :func:`save_probe`. Adding ``alpha * direction`` at ``site`` moves activations towards class 1;
    ``metadata["class_gap"]`` (distance between the class means along the direction) is a
    natural scale for ``alpha``.
    """
    if isinstance(probe, (str, Path)):
        probe, meta = load_probe(probe)
    else:
        if not isinstance(probe, LinearProbe) or not hasattr(probe, "coef_"):
            raise ValueError("to_steering needs a fitted LinearProbe or the path of a saved probe.")
        meta = {"method": probe.method, "class_gap": probe.class_gap_, "layer": _layer_of(site),
                "site": site, "normalisation": {"direction": "unit L2 norm, raw activation space"}}
    meta = {**meta, **(metadata or {})}
    site = site or meta.get("site")
    if site is None:
        raise ValueError("The probe does not record its site; pass site='resid_post.L'.")
    meta["site"] = site
    meta["layer"] = _layer_of(site)
    meta["source"] = "probes.LinearProbe"
    return site, probe.direction_.clone(), meta
