"""Layer-wise (and layer x position) concept probing with concept-depth markers.

Methods: Jin et al. 2024, "Exploring Concept Depth: How Large Language Models Acquire Knowledge
and Concepts at Different Layers?" (arXiv 2404.07066: per-layer linear probes, accuracy vs
relative depth, jump and converging points -- :func:`probes.cv.jump_layer`,
:func:`probes.cv.converging_layer`; their representation, the normed mid-block state, is
``representation="resid_mid_normed"``); Marks & Tegmark 2023, "The Geometry of Truth"
(arXiv 2310.06824: true/false city statements, mass-mean probes); Hewitt & Liang 2019,
"Designing and Interpreting Probes with Control Tasks" (arXiv 1909.03368: selectivity = task
accuracy - control-task accuracy, the control task a random label per word type,
:mod:`probes.control`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from hooked import positions as hpositions
from hooked import sites as hsites

from .control import control_task
from .cv import as_stack, converging_layer, cross_validate, first_above_chance, jump_layer, mean_ci
from .datasets import ConceptDataset, load
from .linear import LinearProbe

REPRESENTATIONS = ("resid_post", "resid_mid_normed")


@dataclass
class LayerSweep:
    """Per-layer cross-validated probe results. Arrays are indexed like ``sites``; the markers
    are values from ``layers``."""

    sites: list
    layers: np.ndarray
    relative_depth: np.ndarray
    fold_acc: np.ndarray            # [L, cv]
    fold_auroc: np.ndarray          # [L, cv]
    acc_mean: np.ndarray
    acc_ci: np.ndarray              # [L, 2] 95 % Student-t interval over folds
    auroc_mean: np.ndarray
    auroc_ci: np.ndarray
    control_acc_mean: np.ndarray | None   # Hewitt & Liang control task, same folds
    control_chance: float | None          # majority-class rate of the control labels
    selectivity: np.ndarray | None        # acc_mean - control_acc_mean
    chance: float
    jump_layer: int | None          # steepest rise (Jin et al.); None: no rise >= jump_min_rise
    converging_layer: int           # first steady layer after the steepest rise (Jin et al.)
    first_above_chance: int | None  # first layer clearly above chance (decodable), not a depth marker
    peak_layer: int
    peak_acc: float
    params: dict = field(default_factory=dict)
    activations: torch.Tensor | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)

    def summary(self) -> str:
        name = self.params.get("dataset", "")
        jump = "none" if self.jump_layer is None else self.jump_layer
        first = "never" if self.first_above_chance is None else self.first_above_chance
        sel = ""
        if self.selectivity is not None:
            sel = f", selectivity at peak {self.selectivity[list(self.layers).index(self.peak_layer)]:+.3f}"
        return (f"{name}: peak acc {self.peak_acc:.3f} at layer {self.peak_layer}, jump layer {jump}, "
                f"converging layer {self.converging_layer}, above chance from layer {first}{sel} "
                f"(chance {self.chance:.2f}, "
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


def sweep_activations(X, y, groups=None, *, types=None, cv=5, method="logistic", control=None, seed=0,
                      C=1.0, shrinkage=0.1, standardize=None, sites=None, layers=None, n_layers=None,
                      jump_min_rise=0.05, converge_eps=0.02, above_chance_margin=0.1,
                      keep_activations=False, name="", tol=1e-4) -> LayerSweep:
    """Cross-validated probe sweep over a precomputed stack ``X [n_layers, N, d]``.

    ``groups`` keep related examples in one fold (scikit-learn ``StratifiedGroupKFold``; plain
    ``StratifiedKFold`` without groups). ``types``: a word-type key per example for the Hewitt &
    Liang control task (:func:`probes.control.control_task`, seeded by ``seed``), fitted on the
    same folds; ``control`` (default: whether ``types`` is given) adds it, its accuracy and the
    selectivity. Depth markers (Jin et al. 2024): :func:`probes.cv.jump_layer`
    (``jump_min_rise``), :func:`probes.cv.converging_layer` (``converge_eps``); and
    :func:`probes.cv.first_above_chance` (``above_chance_margin``). ``relative_depth`` is
    ``(layer + 1) / n_layers`` (the fraction of blocks that have run at ``resid_post.layer``).
    ``tol``: the logistic solver's stopping test, scikit-learn's ``gtol`` (its default 1e-4, at
    which scikit-learn itself stops a few test predictions from the optimum; 1e-5 reaches it).
    """
    X = as_stack(X)
    L = X.shape[0]
    layers = np.arange(L) if layers is None else np.asarray(layers)
    if len(layers) != L:
        raise ValueError(f"{len(layers)} layer labels were given for a stack of {L} layers.")
    n_layers = int(n_layers or (layers.max() + 1))
    if control is None:
        control = types is not None
    control_labels = None
    if control:
        if types is None:
            raise ValueError("control=True needs types=: a word-type key per example for the Hewitt & "
                             "Liang control task (probes.control); built-in datasets carry one "
                             "(ConceptDataset.types). Or pass control=False.")
        control_labels = control_task(types, y, seed=seed)
    runs, folds, chance = cross_validate(X, y, groups, cv, method, control, seed, C, shrinkage,
                                         standardize, tol=tol, control_labels=control_labels)
    acc, auc = runs["task"]
    # both metrics live in [0, 1]: clip the Student-t interval there
    am, alo, ahi = (np.clip(a, 0.0, 1.0) for a in mean_ci(acc))
    um, ulo, uhi = (np.clip(a, 0.0, 1.0) for a in mean_ci(auc))
    ctrl = mean_ci(runs["control"][0])[0] if control else None
    ctrl_chance = float(np.bincount(control_labels).max() / len(control_labels)) if control else None
    jump, conv = jump_layer(am, jump_min_rise), converging_layer(am, converge_eps)
    first = first_above_chance(am, alo, chance, above_chance_margin)
    peak = int(np.argmax(am))
    params = dict(dataset=name, method=method, cv=cv, seed=seed, C=C, shrinkage=shrinkage,
                  control=bool(control), jump_min_rise=jump_min_rise, converge_eps=converge_eps,
                  above_chance_margin=above_chance_margin, n_examples=int(X.shape[1]),
                  d=int(X.shape[2]), grouped=groups is not None, n_layers=n_layers,
                  n_types=None if types is None else int(len(np.unique(np.asarray(types).astype(str)))))
    pick = (lambda i: None if i is None else int(layers[i]))
    return LayerSweep(
        sites=list(sites) if sites is not None else [f"layer.{int(i)}" for i in layers],
        layers=layers, relative_depth=(layers + 1) / n_layers, fold_acc=acc, fold_auroc=auc,
        acc_mean=am, acc_ci=np.stack([alo, ahi], 1), auroc_mean=um, auroc_ci=np.stack([ulo, uhi], 1),
        control_acc_mean=ctrl, control_chance=ctrl_chance,
        selectivity=None if ctrl is None else am - ctrl, chance=chance,
        jump_layer=pick(jump), converging_layer=pick(conv), first_above_chance=pick(first),
        peak_layer=int(layers[peak]), peak_acc=float(am[peak]), params=params,
        activations=X if keep_activations else None,
        labels=np.asarray(y) if keep_activations else None)


def as_dataset(dataset) -> ConceptDataset:
    """Accept a ConceptDataset, a built-in name / CSV path, or a ``(texts, labels[, groups[, types]])``
    tuple."""
    if isinstance(dataset, ConceptDataset):
        return dataset
    if isinstance(dataset, str):
        return load(dataset)
    if isinstance(dataset, (tuple, list)) and len(dataset) in (2, 3, 4):
        texts, labels = dataset[0], dataset[1]
        groups = dataset[2] if len(dataset) >= 3 else None
        types = dataset[3] if len(dataset) == 4 else None
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string.")
        return ConceptDataset("custom", list(texts), np.asarray(labels), groups, types=types)
    raise TypeError(f"dataset must be a ConceptDataset, a dataset name or (texts, labels[, groups[, types]]); "
                    f"got {type(dataset).__name__}.")


def _site_layers(sites):
    """Layer of each concrete site and the blocks run there beyond it (``resid_pre``: 0, else 1)."""
    layers, depth_shift = [], []
    for s in sites:
        parsed = hsites.parse(s)
        if parsed.layer is None:
            raise ValueError(f"Site {s!r} has no layer; a layer sweep needs layered sites such as "
                             "'resid_post.*' or 'mlp_out.*'.")
        layers.append(parsed.layer)
        depth_shift.append(0 if parsed.kind == "resid_pre" else 1)
    return np.asarray(layers), np.asarray(depth_shift, dtype=float)


def _stack(acts, sites):
    return torch.stack([acts[s].reshape(acts[s].shape[0], -1).float() for s in sites])


def _expand(model, sites):
    patterns = [sites] if isinstance(sites, str) else list(sites)
    out = []
    for p in patterns:
        out.extend(hsites.expand(model, p))
    return out


def _normed_mid(model, texts, layers, positions, batch_size, progress):
    """``ln2(resid_mid.L)`` per prompt for each layer ``L``: the input of each block's MLP after its
    norm -- what HF calls ``model.layers.L.post_attention_layernorm``'s output in LLaMA / Qwen /
    Gemma-1, the state the concept-depth reference probes (Luckfort/CD ``utils.LLM``). The norm
    acts per token, so it is applied to the captured rows; ``"mean"`` averages normed tokens."""
    spec = hpositions.parse(positions, hpositions.PER_PROMPT,
                            reason="would not give one activation per prompt")
    mids = [f"resid_mid.{int(L)}" for L in layers]
    read = "all" if spec.kind == "mean" else positions
    acts = model.capture(texts, sites=mids, positions=read, batch_size=batch_size, progress=progress)
    out = []
    with torch.no_grad():
        for L, site in zip(layers, mids):
            norm = model.module("ln2", int(L))
            w = next(norm.parameters(), None)
            x = acts[site]
            y = norm(x.to(w.device, w.dtype) if w is not None else x).float().cpu()
            if spec.kind == "mean":
                prompt = acts.index[:, 0]
                total = torch.zeros(len(texts), y.shape[-1]).index_add_(0, prompt, y)
                y = total / torch.bincount(prompt, minlength=len(texts))[:, None]
            out.append(y.reshape(y.shape[0], -1))
    return torch.stack(out)


def layer_sweep(model, dataset, sites="resid_post.*", positions="last", cv=5, method="logistic",
                control=None, seed=0, batch_size=16, progress=None, keep_activations=False,
                representation="resid_post", **sweep_params) -> LayerSweep:
    """Probe every layer of ``model`` for the concept in ``dataset`` from one capture.

    ``dataset``: a :class:`~probes.datasets.ConceptDataset`, a built-in name ("factual",
    "emotional", "comparison", "inferential"), a CSV path, or ``(texts, labels[, groups])``.
    ``positions`` is passed to ``model.capture`` ("last", "mean", an int index among real tokens).
    ``representation``: ``"resid_post"`` (the residual stream after each block at ``sites``) or
    ``"resid_mid_normed"`` (``ln2(resid_mid.L)``, the normed mid-block state that Jin et al.'s
    reference code probes; ``sites`` then only chooses the layers). ``control`` (default: when
    the dataset has ``types``) adds the Hewitt & Liang control task and the selectivity. Other
    keywords go to :func:`sweep_activations` (``C``, ``shrinkage``, ``jump_min_rise``,
    ``converge_eps``, ...). Returns a :class:`LayerSweep` (``.summary()``, ``.to_dict()``).

    Deviations from the reference code (Luckfort/CD ``main.py``), by choice: the accuracy is the
    mean over group-aware stratified folds (the reference scores one random 60/40 split,
    ``random_state=42``, with no groups), and the logistic probe standardises its features on the
    training folds (the reference fits ``LogisticRegression()`` on raw states); both probes use
    scikit-learn's default ``C = 1``.
    """
    if representation not in REPRESENTATIONS:
        raise ValueError(f"Unknown representation {representation!r}; use one of {list(REPRESENTATIONS)}.")
    ds = as_dataset(dataset)
    concrete = _expand(model, sites)
    layers, shift = _site_layers(concrete)
    if representation == "resid_post":
        acts = model.capture(ds.texts, sites=concrete, positions=positions, batch_size=batch_size,
                             progress=progress)
        X = _stack(acts, concrete)
        names = concrete
    else:
        kinds = {hsites.parse(s).kind for s in concrete}
        if not kinds <= {"resid_post", "resid_mid"}:
            raise ValueError(f"representation='resid_mid_normed' reads ln2(resid_mid.L); choose its layers "
                             f"with 'resid_post' or 'resid_mid' sites, not {sorted(kinds)}.")
        X = _normed_mid(model, ds.texts, layers, positions, batch_size, progress)
        names = [f"ln2(resid_mid.{int(L)})" for L in layers]
        shift = np.full(len(layers), 0.5)  # attention of block L has run, its MLP has not
    res = sweep_activations(X, ds.labels, ds.groups, types=ds.types, cv=cv, method=method,
                            control=control, seed=seed, sites=names, layers=layers,
                            n_layers=model.n_layers, keep_activations=keep_activations,
                            name=ds.name, **sweep_params)
    res.relative_depth = (layers + shift) / model.n_layers
    res.params.update(model=getattr(model, "name", None), positions=str(positions),
                      representation=representation)
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


def position_sweep_from_stacks(stacks, y, groups=None, *, positions, sites=None, cv=5,
                               method="logistic", seed=0, C=1.0, shrinkage=0.1,
                               standardize=None) -> PositionSweep:
    """The array-level engine of :func:`position_sweep`: ``stacks`` is a list (one per position)
    of precomputed ``[L, N, d]`` activation stacks. All (position, layer) probes are fitted in one
    cross-validation over the stacks concatenated along the layer axis (the same folds for every
    position; the logistic probes in one batched solver run, :mod:`probes.solvers`)."""
    if len(stacks) != len(positions):
        raise ValueError(f"{len(stacks)} activation stacks for {len(positions)} positions.")
    Xs = [as_stack(X) for X in stacks]
    if any(X.shape != Xs[0].shape for X in Xs):
        raise ValueError(f"Every position's stack must have the same [L, N, d] shape; got "
                         f"{[tuple(X.shape) for X in Xs]}.")
    P, L = len(Xs), Xs[0].shape[0]
    runs, _, _ = cross_validate(torch.cat(Xs), y, groups, cv, method, False, seed, C, shrinkage,
                                standardize)
    acc, auc = (np.clip(mean_ci(a)[0], 0.0, 1.0).reshape(P, L).T for a in runs["task"])
    return PositionSweep(sites=list(sites) if sites else [f"layer.{i}" for i in range(L)],
                         positions=list(positions), acc_mean=acc, auroc_mean=auc,
                         params=dict(cv=cv, method=method, seed=seed, C=C, shrinkage=shrinkage))


def position_stacks(model, dataset, sites="resid_post.*", positions=None, batch_size=16, progress=None):
    """One capture of the last few token positions of every prompt, as one ``[L, n, d]`` stack per position.

    ``positions``: offsets from each prompt's last real token (``-1`` = last), an int or a list
    of distinct negative ints in the :mod:`hooked.positions` vocabulary; default: the last
    ``min(8, shortest prompt length)`` tokens. Returns ``(stacks, offsets, sites, dataset)``: the stacks
    in the order of ``offsets``, ``sites`` expanded to concrete names (the stacks' layer axis)."""
    ds = as_dataset(dataset)
    concrete = _expand(model, sites)
    shortest = int(model.tokenize(ds.texts)["attention_mask"].sum(1).min())
    if positions is None:
        positions = list(range(-min(8, shortest), 0))
    spec = hpositions.parse(positions, ("index", "indices"),
                            reason="is not a list of token offsets for a position sweep")
    offsets = list(spec.indices)
    if any(p >= 0 for p in offsets) or len(set(offsets)) != len(offsets) or -min(offsets) > shortest:
        raise ValueError(f"positions must be distinct negative offsets from the last token (-1 = last), "
                         f"no further back than the shortest prompt ({shortest} tokens); got {positions}.")
    acts = model.capture(ds.texts, sites=concrete, positions=offsets, batch_size=batch_size,
                         progress=progress)
    full = _stack(acts, concrete)                       # [L, n * P, d], prompt-major
    prompt, token = acts.index[:, 0], acts.index[:, 1]
    n = len(ds)
    last = torch.full((n,), -1, dtype=torch.long).scatter_reduce(0, prompt, token, reduce="amax")
    length = last - max(offsets)                        # real tokens per prompt
    row_of = {(int(i), int(t)): r for r, (i, t) in enumerate(acts.index.tolist())}
    stacks = [full[:, torch.as_tensor([row_of[(i, int(length[i]) + p)] for i in range(n)])]
              for p in offsets]
    return stacks, offsets, concrete, ds


def position_sweep(model, dataset, sites="resid_post.*", positions=None, cv=5, method="mass_mean",
                   seed=0, batch_size=16, progress=None, **kw) -> PositionSweep:
    """Probe every layer at each of the last few token positions (a layers x positions heatmap).

    ``positions``: offsets from each prompt's last real token (``-1`` = last), an int or a list
    of distinct negative ints in the :mod:`hooked.positions` vocabulary; default: the last
    ``min(8, shortest prompt length)`` tokens. One capture of those positions
    (:func:`position_stacks`); probes are then fitted per (layer, position) by
    :func:`position_sweep_from_stacks` -- the closed-form ``mass_mean`` default keeps it fast.
    """
    stacks, offsets, concrete, ds = position_stacks(model, dataset, sites, positions, batch_size, progress)
    res = position_sweep_from_stacks(stacks, ds.labels, ds.groups, positions=offsets, sites=concrete,
                                     cv=cv, method=method, seed=seed, **kw)
    res.params.update(dataset=ds.name, model=getattr(model, "name", None))
    return res


DEPRECATED = {"SweepResult": ("LayerSweep", lambda: LayerSweep),
               "sweep_positions": ("position_sweep_from_stacks", lambda: position_sweep_from_stacks)}


def __getattr__(name):
    if name in DEPRECATED:
        new, get = DEPRECATED[name]
        warnings.warn(f"probes.{name} is deprecated; use probes.{new}.", DeprecationWarning, stacklevel=2)
        return get()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
