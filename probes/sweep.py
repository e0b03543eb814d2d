"""Layer-wise (and layer x position) concept probing with concept-depth markers.

Methods: Jin et al. 2024, "Exploring Concept Depth: How Large Language Models Acquire Knowledge
and Concepts at Different Layers?" (per-layer linear probes, accuracy vs relative depth, jump and
converging points); Marks & Tegmark 2023, "The Geometry of Truth" (true/false city statements,
mass-mean probes); Hewitt & Liang 2019, "Designing and Interpreting Probes with Control Tasks"
(selectivity = task accuracy - control accuracy, here with shuffled labels as the control).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .datasets import ConceptDataset, load
from .linear import LinearProbe
from .cv import as_stack, cross_validate, depth_markers, mean_ci


@dataclass
class SweepResult:
    """Per-layer cross-validated probe results. Arrays are indexed like ``sites``."""

    sites: list
    layers: np.ndarray
    relative_depth: np.ndarray
    fold_acc: np.ndarray            # [L, cv]
    fold_auroc: np.ndarray          # [L, cv]
    acc_mean: np.ndarray
    acc_ci: np.ndarray              # [L, 2] 95 % Student-t interval over folds
    auroc_mean: np.ndarray
    auroc_ci: np.ndarray
    control_acc_mean: np.ndarray | None
    selectivity: np.ndarray | None  # acc_mean - control_acc_mean
    chance: float
    jump_layer: int | None          # value from ``layers`` (None: never clearly above chance)
    converging_layer: int
    peak_layer: int
    peak_acc: float
    params: dict = field(default_factory=dict)
    activations: torch.Tensor | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)

    def summary(self) -> str:
        name = self.params.get("dataset", "")
        jump = "none" if self.jump_layer is None else self.jump_layer
        return (f"{name}: peak acc {self.peak_acc:.3f} at layer {self.peak_layer}, jump layer {jump}, "
                f"converging layer {self.converging_layer} (chance {self.chance:.2f}, "
                f"n={self.params.get('n_examples')}, cv={self.params.get('cv')}, "
                f"{self.params.get('method')})")

    def to_dict(self) -> dict:
        """Every number as plain JSON (``hooked.jsonutil.to_jsonable``: arrays to lists, NaN to None);
        the kept activations and labels are left out."""
        from hooked.jsonutil import to_jsonable
        skip = {"activations", "labels"}
        return to_jsonable({k: v for k, v in self.__dict__.items() if k not in skip})

    def probe(self, layer: int, **probe_params) -> LinearProbe:
        """Fit a :class:`LinearProbe` on all examples at ``layer`` (needs ``keep_activations``)."""
        if self.activations is None:
            raise ValueError("This sweep did not keep its activations; rerun with keep_activations=True.")
        idx = list(self.layers).index(layer) if layer in list(self.layers) else None
        if idx is None:
            raise ValueError(f"Layer {layer} is not in this sweep; its layers are {list(self.layers)}.")
        params = {"method": self.params.get("method", "logistic"), **probe_params}
        return LinearProbe(**params).fit(self.activations[idx], self.labels)


def sweep_activations(X, y, groups=None, *, cv=5, method="logistic", control=True, seed=0, C=1.0,
                      shrinkage=0.1, standardize=None, sites=None, layers=None, n_layers=None,
                      jump_margin=0.1, converge_eps=0.02, keep_activations=False,
                      name="") -> SweepResult:
    """Cross-validated probe sweep over a precomputed stack ``X [n_layers, N, d]``.

    ``groups`` keep related examples in one fold (scikit-learn ``StratifiedGroupKFold``; plain
    ``StratifiedKFold`` without groups). ``control`` adds the shuffled-label control and the
    selectivity. Depth markers: see :func:`probes.cv.depth_markers` (``jump_margin``,
    ``converge_eps``). ``relative_depth`` is ``(layer + 1) / n_layers`` (the fraction of blocks
    that have run at ``resid_post.layer``).
    """
    X = as_stack(X)
    L = X.shape[0]
    layers = np.arange(L) if layers is None else np.asarray(layers)
    if len(layers) != L:
        raise ValueError(f"{len(layers)} layer labels were given for a stack of {L} layers.")
    n_layers = int(n_layers or (layers.max() + 1))
    runs, folds, chance = cross_validate(X, y, groups, cv, method, control, seed, C, shrinkage,
                                         standardize)
    acc, auc = runs["task"]
    # both metrics live in [0, 1]: clip the Student-t interval there
    am, alo, ahi = (np.clip(a, 0.0, 1.0) for a in mean_ci(acc))
    um, ulo, uhi = (np.clip(a, 0.0, 1.0) for a in mean_ci(auc))
    ctrl = mean_ci(runs["control"][0])[0] if control else None
    jump, conv = depth_markers(am, alo, chance, jump_margin, converge_eps)
    peak = int(np.argmax(am))
    params = dict(dataset=name, method=method, cv=cv, seed=seed, C=C, shrinkage=shrinkage,
                  control=control, jump_margin=jump_margin, converge_eps=converge_eps,
                  n_examples=int(X.shape[1]), d=int(X.shape[2]),
                  grouped=groups is not None, n_layers=n_layers)
    return SweepResult(
        sites=list(sites) if sites is not None else [f"layer.{int(i)}" for i in layers],
        layers=layers, relative_depth=(layers + 1) / n_layers, fold_acc=acc, fold_auroc=auc,
        acc_mean=am, acc_ci=np.stack([alo, ahi], 1), auroc_mean=um, auroc_ci=np.stack([ulo, uhi], 1),
        control_acc_mean=ctrl, selectivity=None if ctrl is None else am - ctrl, chance=chance,
        jump_layer=None if jump is None else int(layers[jump]), converging_layer=int(layers[conv]),
        peak_layer=int(layers[peak]), peak_acc=float(am[peak]), params=params,
        activations=X if keep_activations else None,
        labels=np.asarray(y) if keep_activations else None)


def as_dataset(dataset) -> ConceptDataset:
    """Accept a ConceptDataset, a built-in name / CSV path, or a ``(texts, labels[, groups])`` tuple."""
    if isinstance(dataset, ConceptDataset):
        return dataset
    if isinstance(dataset, str):
        return load(dataset)
    if isinstance(dataset, (tuple, list)) and len(dataset) in (2, 3):
        texts, labels = dataset[0], dataset[1]
        groups = dataset[2] if len(dataset) == 3 else None
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string.")
        return ConceptDataset("custom", list(texts), np.asarray(labels), groups)
    raise TypeError(f"dataset must be a ConceptDataset, a dataset name or (texts, labels[, groups]); "
                    f"got {type(dataset).__name__}.")


def _site_layers(model, sites):
    from hooked import sites as hsites
    layers, depth_shift = [], []
    for s in sites:
        parsed = hsites.parse(s)
        if parsed.layer is None:
            raise ValueError(f"Site {s!r} has no layer; a layer sweep needs layered sites such as "
                             "'resid_post.*' or 'mlp_out.*'.")
        layers.append(parsed.layer)
        depth_shift.append(0 if parsed.kind == "resid_pre" else 1)
    return np.asarray(layers), np.asarray(depth_shift)


def _stack(acts, sites):
    return torch.stack([acts[s].reshape(acts[s].shape[0], -1).float() for s in sites])


def _expand(model, sites):
    from hooked import sites as hsites
    patterns = [sites] if isinstance(sites, str) else list(sites)
    out = []
    for p in patterns:
        out.extend(hsites.expand(model, p))
    return out


def layer_sweep(model, dataset, sites="resid_post.*", positions="last", cv=5, method="logistic",
                control=True, seed=0, batch_size=16, progress=None, keep_activations=False,
                **sweep_params) -> SweepResult:
    """Probe every layer of ``model`` for the concept in ``dataset`` from one capture.

    ``dataset``: a :class:`~probes.datasets.ConceptDataset`, a built-in name ("factual",
    "emotional", "comparison", "inferential"), a CSV path, or ``(texts, labels[, groups])``.
    ``positions`` is passed to ``model.capture`` ("last", "mean", an int index among real tokens).
    Other keywords go to :func:`sweep_activations` (``C``, ``shrinkage``, ``jump_margin``,
    ``converge_eps``, ...). Returns a :class:`SweepResult` (``.summary()``, ``.to_dict()``).
    """
    ds = as_dataset(dataset)
    concrete = _expand(model, sites)
    acts = model.capture(ds.texts, sites=concrete, positions=positions, batch_size=batch_size,
                         progress=progress)
    X = _stack(acts, concrete)
    layers, shift = _site_layers(model, concrete)
    res = sweep_activations(X, ds.labels, ds.groups, cv=cv, method=method, control=control,
                            seed=seed, sites=concrete, layers=layers, n_layers=model.n_layers,
                            keep_activations=keep_activations, name=ds.name, **sweep_params)
    res.relative_depth = (layers + shift) / model.n_layers
    res.params.update(model=getattr(model, "name", None), positions=str(positions))
    return res


@dataclass
class PositionSweep:
    """Accuracy over layers x token positions (``positions`` are offsets from the last real token)."""

    sites: list
    positions: list
    acc_mean: np.ndarray    # [L, P]
    auroc_mean: np.ndarray  # [L, P]
    params: dict = field(default_factory=dict)

    def best(self):
        i, j = np.unravel_index(np.argmax(self.acc_mean), self.acc_mean.shape)
        return self.sites[i], self.positions[j], float(self.acc_mean[i, j])


def sweep_positions(stacks, y, groups=None, *, positions, sites=None, cv=5, method="logistic",
                    seed=0, **kw) -> PositionSweep:
    """Array core of :func:`position_sweep`: ``stacks`` is a list (one per position) of ``[L, N, d]``."""
    if len(stacks) != len(positions):
        raise ValueError(f"{len(stacks)} activation stacks for {len(positions)} positions.")
    cols = [sweep_activations(X, y, groups, cv=cv, method=method, control=False, seed=seed, **kw)
            for X in stacks]
    L = cols[0].acc_mean.shape[0]
    return PositionSweep(sites=list(sites) if sites else [f"layer.{i}" for i in range(L)],
                         positions=list(positions),
                         acc_mean=np.stack([c.acc_mean for c in cols], 1),
                         auroc_mean=np.stack([c.auroc_mean for c in cols], 1),
                         params=dict(cv=cv, method=method, seed=seed))


def position_sweep(model, dataset, sites="resid_post.*", positions=None, cv=5, method="mass_mean",
                   seed=0, batch_size=16, progress=None, **kw) -> PositionSweep:
    """Probe every layer at each of the last few token positions (a layers x positions heatmap).

    ``positions``: offsets from each prompt's last real token (``-1`` = last); default: the last
    ``min(8, shortest prompt length)`` tokens. One capture with ``positions="all"``; probes are
    then fitted per (layer, position) -- the closed-form ``mass_mean`` default keeps it fast.
    """
    ds = as_dataset(dataset)
    concrete = _expand(model, sites)
    acts = model.capture(ds.texts, sites=concrete, positions="all", batch_size=batch_size,
                         progress=progress)
    index = acts.index
    n = len(ds)
    lengths = torch.zeros(n, dtype=torch.long).scatter_reduce(
        0, index[:, 0], index[:, 1] + 1, reduce="amax")
    if positions is None:
        k = int(min(8, lengths.min().item()))
        positions = list(range(-k, 0))
    positions = [int(p) for p in positions]
    if any(p >= 0 for p in positions) or -min(positions) > lengths.min().item():
        raise ValueError(f"positions must be negative offsets from the last token, no further back "
                         f"than the shortest prompt ({lengths.min().item()} tokens); got {positions}.")
    full = _stack(acts, concrete)                       # [L, n_tokens, d]
    row_of = {(int(i), int(t)): r for r, (i, t) in enumerate(index.tolist())}
    stacks = []
    for p in positions:
        rows = torch.as_tensor([row_of[(i, int(lengths[i]) + p)] for i in range(n)])
        stacks.append(full[:, rows])
    res = sweep_positions(stacks, ds.labels, ds.groups, positions=positions, sites=concrete, cv=cv,
                          method=method, seed=seed, n_layers=model.n_layers, **kw)
    res.params.update(dataset=ds.name, model=getattr(model, "name", None))
    return res
