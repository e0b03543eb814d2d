"""Preference sets and the JSONL loader of analyses.dpo (no models)."""
import json

import pytest

from analyses.dpo import preferences as P


def test_knowledge_set_is_low_entropy_one_correct_fact():
    k = P.knowledge_set()
    assert k.entropy == "low" and len(k) == 52
    row = next(p for p in k.pairs if p["prompt"] == "What is the capital of France?")
    assert row["chosen"] == "The capital of France is Paris."
    assert row["rejected"].startswith("The capital of France is ") and "Paris" not in row["rejected"]
    sums = [p for p in k.pairs if " plus " in p["prompt"]]
    for p in sums:
        a, b = (int(t) for t in p["prompt"].removeprefix("What is ").removesuffix("?").split(" plus "))
        assert p["chosen"].endswith(f"is {a + b}.") and not p["rejected"].endswith(f"is {a + b}.")
    # one chosen answer per prompt: no prompt appears with two different chosen answers
    chosen_by_prompt = {}
    for p in k.pairs:
        chosen_by_prompt.setdefault(p["prompt"], set()).add(p["chosen"])
    assert all(len(v) == 1 for v in chosen_by_prompt.values())


def test_style_set_is_high_entropy_many_phrasings():
    s = P.style_set(variants=2)
    assert s.entropy == "high" and len(s) == 32
    by_prompt = {}
    for p in s.pairs:
        by_prompt.setdefault(p["prompt"], []).append(p["chosen"])
        assert len(p["chosen"]) > 2 * len(p["rejected"])  # complete vs curt
    assert len(by_prompt) == 16
    # several phrasings of the chosen answer per prompt, and many distinct openers over the set
    assert sum(len(set(v)) for v in by_prompt.values()) >= 28
    assert len({c.split("!")[0].split(".")[0] for c in s.chosen}) >= 6


def test_sets_are_deterministic_in_seed():
    assert P.knowledge_set(seed=3).pairs == P.knowledge_set(seed=3).pairs
    assert P.style_set(seed=1).pairs != P.style_set(seed=2).pairs
    assert len(P.get("knowledge", n=5)) == 5


def test_jsonl_roundtrip(tmp_path):
    s = P.style_set(n=4)
    path = s.to_jsonl(tmp_path / "prefs.jsonl")
    back = P.get(str(path))
    assert back.pairs == s.pairs and back.name == "prefs"


def test_empty_field_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [{"prompt": "Q?", "chosen": "A.", "rejected": "B."}, {"prompt": "Q2?", "chosen": " ", "rejected": "B."}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'chosen'"):
        P.load_jsonl(path)
    path.write_text('{"prompt": "Q?", "chosen": "A."}\n')
    with pytest.raises(ValueError, match="field 'rejected' is missing"):
        P.load_jsonl(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        P.load_jsonl(path)
    with pytest.raises(ValueError, match="row 0: field 'prompt'"):
        P.PreferenceSet("x", [{"prompt": "", "chosen": "a", "rejected": "b"}])
    with pytest.raises(ValueError, match="same text"):
        P.PreferenceSet("x", [{"prompt": "q", "chosen": "a", "rejected": "a"}])


def test_unknown_set_name():
    with pytest.raises(ValueError, match="Unknown preference set 'nope'.*knowledge"):
        P.get("nope")
    with pytest.raises(TypeError, match="preferences must be"):
        P.get(3)


def test_render_chat_uses_the_template():
    from transformers import AutoTokenizer

    from hooked import packaged

    tok = AutoTokenizer.from_pretrained(str(packaged.tokenizer_dir()))
    k = P.knowledge_set(n=2).render_chat(tok)
    assert k.pairs[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\n" + P.knowledge_set(n=2).prompts[0] + "<|im_end|>" in k.pairs[0]["prompt"]
    assert k.chosen == P.knowledge_set(n=2).chosen and k.meta["chat_template"] is True
