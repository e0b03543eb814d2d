"""Knowledge entropy across pretraining checkpoints, at a scale a CPU can run.

Kim et al. 2024 ("Knowledge Entropy Decay during Language Model Pretraining Hinders New Knowledge
Acquisition") report that knowledge entropy -- the summed per-layer entropy of the normalised mean
FFN memory coefficients (Eq. 2, :func:`probes.knowledge_entropy`) -- falls steadily as OLMo
pretrains. This module repeats the measurement on a tiny Llama trained from scratch on a corpus
generated here: templated synthetic facts about invented people (birth city, country, job, birth
year, favourite colour), tokenised with a word-level tokenizer built from the corpus.

The setup is fixed in advance (standard AdamW, linear warm-up, cosine decay, no tuning towards the
expected result). ``run`` trains, saves checkpoints as safetensors (``save_pretrained``), measures
knowledge entropy and held-out loss at each checkpoint, writes a plot and a JSON summary, and
returns the numbers; whether the entropy declines is reported, not assumed.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from hooked.util import torch_threads

PROFILES = {
    # steps, checkpoint steps, batch size, model width, layers
    "quick": dict(steps=400, checkpoints=[0, 25, 50, 100, 200, 400], batch_size=32, d_model=64,
                  n_layers=4, d_mlp=256, n_people=300, lr=1e-3),
    "full": dict(steps=3000, checkpoints=[0, 50, 100, 250, 500, 1000, 2000, 3000], batch_size=32,
                 d_model=96, n_layers=4, d_mlp=384, n_people=600, lr=1e-3),
    # for tests only: exercises every step in seconds
    "smoke": dict(steps=20, checkpoints=[0, 10, 20], batch_size=8, d_model=32, n_layers=2, d_mlp=64,
                  n_people=20, lr=1e-3),
}

_SYL = ["ka", "lo", "mi", "ra", "te", "vo", "su", "ne", "di", "pa", "ri", "to", "ba", "le", "zu",
        "fi", "go", "ma", "ni", "sa", "ve", "do", "ru", "ke"]
_JOBS = ["baker", "pilot", "nurse", "farmer", "painter", "teacher", "lawyer", "chemist", "sailor",
         "tailor", "miner", "poet", "judge", "dentist", "architect", "butcher", "singer", "banker"]
_COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "pink"]
_TEMPLATES = {
    "city": ["{p} was born in {v} .", "the birthplace of {p} is {v} .", "{p} grew up in {v} ."],
    "country": ["{p} is a citizen of {v} .", "the home country of {p} is {v} ."],
    "job": ["{p} works as a {v} .", "the job of {p} is {v} .", "by profession {p} is a {v} ."],
    "year": ["{p} was born in the year {v} .", "the birth year of {p} is {v} ."],
    "colour": ["the favourite colour of {p} is {v} .", "{p} likes the colour {v} most ."],
}


def make_corpus(n_people: int, seed: int = 0):
    """Facts about ``n_people`` invented people: (train sentences, held-out sentences, facts)."""
    from probes.datasets import city_rows

    rng = random.Random(seed)
    cities = city_rows()
    first = sorted({a + b for a in _SYL for b in _SYL})
    last = sorted({a + b + c for a in _SYL[:12] for b in _SYL for c in ["n", "s", "r"]})
    people = set()
    while len(people) < n_people:
        people.add(f"{rng.choice(first)} {rng.choice(last)}")
    facts = []
    for p in sorted(people):
        city, country = rng.choice(cities)
        facts.append({"person": p, "city": city.lower(), "country": country.lower(),
                      "job": rng.choice(_JOBS), "year": str(rng.randrange(1900, 2000)),
                      "colour": rng.choice(_COLOURS)})
    train, held = [], []
    for f in facts:
        for attr, templates in _TEMPLATES.items():
            sents = [t.format(p=f["person"], v=f[attr]) for t in templates]
            train.extend(sents[:-1])
            held.append(sents[-1])          # last paraphrase never seen in training
    return train, held, facts


def build_tokenizer(sentences):
    """Word-level tokenizer over the corpus (BOS prepended), as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<bos>", "<eos>"]
    words = sorted({w for s in sentences for w in s.split()})
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")


def build_model(vocab_size: int, cfg: dict, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=cfg["d_model"], intermediate_size=cfg["d_mlp"],
                         num_hidden_layers=cfg["n_layers"], num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=2,
                         eos_token_id=3, pad_token_id=0)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _batch(tok, sentences, rng, batch_size, per_seq=3):
    texts = [" ".join(rng.sample(sentences, per_seq)) for _ in range(batch_size)]
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc["input_ids"], enc["attention_mask"], labels


@torch.no_grad()
def _eval_loss(model, tok, sentences, batch_size=64):
    model.eval()
    tot, n = 0.0, 0
    for i in range(0, len(sentences), batch_size):
        enc = tok(sentences[i:i + batch_size], return_tensors="pt", padding=True)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        out = model(**enc, labels=labels)
        k = int((labels[:, 1:] != -100).sum())
        tot += float(out.loss) * k
        n += k
    model.train()
    return tot / n


def _copy_weights(src, hooked_model):
    """Load ``src``'s weights into a HookedModel built on a twin model (same parameter names)."""
    src_params = dict(src.named_parameters())
    with torch.no_grad():
        matched = 0
        for name, p in hooked_model.hf_model.named_parameters():
            if name in src_params:
                p.copy_(src_params[name])
                matched += 1
    if matched != len(src_params):
        raise RuntimeError(f"Copied {matched} of {len(src_params)} parameters into the hooked model.")


def run(out_dir="runs/pretraining_entropy", profile: str = "quick", progress: bool = True, seed: int = 0,
        n_eval_texts: int = 128, threads: int | None = 1) -> dict:
    """Train a tiny LM from scratch, checkpoint it, and measure knowledge entropy at each checkpoint.

    Returns a dict with ``steps``, ``knowledge_entropy`` (total, nats), ``per_layer``, ``eval_loss``,
    ``declines`` (last checkpoint below the first), ``monotone_fraction`` and ``spearman``
    (rank correlation of entropy with step), plus paths of the plot, JSON and checkpoints.

    ``threads``: torch threads while this runs (restored after). A model this small is
    latency-bound; one thread avoids oversubscription on a shared CPU (measured: 0.37 s per step
    with 1 thread vs 6.3 s with 2 on a busy 2-core machine). ``None`` keeps the current setting.
    """
    with torch_threads(threads):
        return _run(out_dir, profile, progress, seed, n_eval_texts)


def _run(out_dir, profile, progress, seed, n_eval_texts) -> dict:
    import hooked
    import probes
    from scipy.stats import spearmanr
    from tqdm.auto import tqdm

    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; use one of {list(PROFILES)}.")
    cfg = PROFILES[profile]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train, held, facts = make_corpus(cfg["n_people"], seed)
    tok = build_tokenizer(train + held)
    # a tokenizer loaded from disk carries its path, which the TransformerLens bridge needs
    tok.save_pretrained(out / "tokenizer")
    tok = type(tok).from_pretrained(str(out / "tokenizer"))
    rng = random.Random(seed + 1)
    eval_texts = rng.sample(train, n_eval_texts)     # knowledge entropy is measured on seen facts
    model = build_model(len(tok), cfg, seed)
    twin = build_model(len(tok), cfg, seed)
    hm = hooked.load_model(twin, tokenizer=tok)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, cfg["steps"] // 20)

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        frac = (step - warm) / max(1, cfg["steps"] - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    records, train_losses = [], []

    def checkpoint(step):
        path = out / f"checkpoint-{step:05d}"
        model.save_pretrained(path, safe_serialization=True)
        tok.save_pretrained(path)
        _copy_weights(model, hm)
        ke = probes.knowledge_entropy(hm, eval_texts, batch_size=32)
        rec = {"step": step, "knowledge_entropy": ke.total,
               "per_layer": [float(x) for x in ke.per_layer],
               "eval_loss_seen": _eval_loss(model, tok, eval_texts),
               "eval_loss_heldout_paraphrase": _eval_loss(model, tok, held[:256]),
               "train_loss": float(np.mean(train_losses[-25:])) if train_losses else None,
               "checkpoint": str(path)}
        records.append(rec)
        return rec

    model.train()
    bar = tqdm(range(cfg["steps"] + 1), disable=not progress, desc=f"pretraining ({profile})")
    for step in bar:
        if step in cfg["checkpoints"]:
            rec = checkpoint(step)
            bar.set_postfix(ke=f"{rec['knowledge_entropy']:.3f}", loss=f"{rec['eval_loss_seen']:.2f}")
        if step == cfg["steps"]:
            break
        ids, mask, labels = _batch(tok, train, rng, cfg["batch_size"])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        train_losses.append(float(loss.detach()))

    steps = [r["step"] for r in records]
    ke = [r["knowledge_entropy"] for r in records]
    diffs = np.diff(ke)
    result = {
        "profile": profile, "config": cfg, "seed": seed, "n_train_sentences": len(train),
        "vocab_size": len(tok), "n_eval_texts": n_eval_texts,
        "steps": steps, "knowledge_entropy": ke, "per_layer": [r["per_layer"] for r in records],
        "eval_loss": [r["eval_loss_seen"] for r in records],
        "eval_loss_heldout_paraphrase": [r["eval_loss_heldout_paraphrase"] for r in records],
        "declines": bool(ke[-1] < ke[0]),
        "change_first_to_last": float(ke[-1] - ke[0]),
        "monotone_fraction": float(np.mean(diffs < 0)) if len(diffs) else None,
        "spearman": float(spearmanr(steps, ke).statistic) if len(ke) > 2 else None,
        "max_entropy": cfg["n_layers"] * math.log(cfg["d_mlp"]),
        "checkpoints": [r["checkpoint"] for r in records],
        "seconds": round(time.time() - t0, 1),
    }
    # an object-oriented figure (no pyplot): nothing to close, it is freed with its last reference
    probes.plot_knowledge_entropy(steps, ke, result["per_layer"], path=out / "knowledge_entropy.png",
                                  title=f"Knowledge entropy over pretraining ({profile})")
    result["plot"] = str(out / "knowledge_entropy.png")
    (out / "pretraining_entropy.json").write_text(json.dumps(result, indent=2))
    result["json"] = str(out / "pretraining_entropy.json")
    return result


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/pretraining_entropy")
    ap.add_argument("--profile", default="quick", choices=list(PROFILES))
    args = ap.parse_args()
    r = run(args.out, args.profile)
    print(json.dumps({k: r[k] for k in ("steps", "knowledge_entropy", "eval_loss", "declines", "spearman")}, indent=1))
