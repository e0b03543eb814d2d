"""Row and length surgery on a transformers ``DynamicCache`` (keys/values per layer).

The latent runner appends read-out tokens after every latent step and then drops
them again, and the prefix-reuse sweep copies the clean rows of a cache into new
row groups. Both need the cache's per-layer tensors, which transformers keeps on
``cache.layers[i].keys`` / ``.values`` ([B, H_kv, T, d_head]).
"""
from __future__ import annotations

import torch


def _layers(cache):
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(
            f"Expected a transformers DynamicCache with a `.layers` list, got {type(cache).__name__}; "
            "the latent runner needs a model whose forward returns a DynamicCache (any HF causal LM with use_cache=True)."
        )
    return layers


def truncate(cache, length: int) -> None:
    """Keep the first ``length`` positions of every layer (in place)."""
    for i, layer in enumerate(_layers(cache)):
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        have = layer.keys.shape[-2]
        if have < length:
            raise ValueError(
                f"Cache layer {i} holds {have} positions but {length} were expected; the layer drops old positions "
                "(sliding-window attention), which the latent runner cannot rewind. Use a model with full attention "
                "or run the rollout with use_cache=False."
            )
        layer.keys = layer.keys[..., :length, :]
        layer.values = layer.values[..., :length, :]


def append_rows(cache, rows: torch.Tensor) -> None:
    """Append copies of the batch rows ``rows`` at the end of the batch (in place)."""
    for layer in _layers(cache):
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        layer.keys = torch.cat([layer.keys, layer.keys[rows]], dim=0)
        layer.values = torch.cat([layer.values, layer.values[rows]], dim=0)


def repeat_rows(cache, times: int):
    """A new cache whose batch is ``times`` copies of ``cache``'s rows (copy g holds rows g*B..g*B+B-1);
    the original is left untouched."""
    import copy

    out = copy.copy(cache)
    out.layers = []
    for layer in _layers(cache):
        new = copy.copy(layer)
        if getattr(layer, "keys", None) is not None and layer.keys.numel() > 0:
            new.keys = layer.keys.repeat(times, 1, 1, 1)
            new.values = layer.values.repeat(times, 1, 1, 1)
        out.layers.append(new)
    return out
