"""The pretraining knowledge-entropy study, on its smoke profile (seconds)."""
import json
import math
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import hooked
import probes
from analyses import pretraining_entropy as pe


def test_corpus_and_tokenizer():
    train, held, facts = pe.make_corpus(10, seed=0)
    assert len(facts) == 10 and len(train) == 10 * (2 + 1 + 2 + 1 + 1) and len(held) == 10 * 5
    assert not set(held) & set(train)
    tok = pe.build_tokenizer(train + held)
    ids = tok(train[0])["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.decode(ids[1:]) == train[0]


def test_smoke_run_writes_checkpoints_and_consistent_numbers(tmp_path):
    r = pe.run(tmp_path, profile="smoke", progress=False, n_eval_texts=16)
    assert r["steps"] == [0, 10, 20]
    cfg = pe.PROFILES["smoke"]
    assert r["max_entropy"] == pytest.approx(cfg["n_layers"] * math.log(cfg["d_mlp"]))
    assert all(0 < h < r["max_entropy"] for h in r["knowledge_entropy"])
    assert r["eval_loss"][-1] < r["eval_loss"][0]          # it does learn
    assert Path(r["plot"]).stat().st_size > 1000
    assert json.loads(Path(r["json"]).read_text())["knowledge_entropy"] == r["knowledge_entropy"]
    # a saved checkpoint, reloaded from safetensors, gives the recorded knowledge entropy
    ckpt = Path(r["checkpoints"][-1])
    assert (ckpt / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(ckpt)
    tok = PreTrainedTokenizerFast.from_pretrained(ckpt)
    hm = hooked.load_model(model, tokenizer=tok)
    train, _, _ = pe.make_corpus(cfg["n_people"], seed=0)
    import random
    texts = random.Random(1).sample(train, 16)
    ke = probes.knowledge_entropy(hm, texts, batch_size=32)
    assert ke.total == pytest.approx(r["knowledge_entropy"][-1], rel=1e-4)
    with pytest.raises(ValueError, match="profile"):
        pe.run(tmp_path, profile="huge")
