"""The SAE and portable-steering section of the demo: a handful of the shipped SmolLM2 SAE's features
with their top-activating tokens, its reconstruction metrics, a steering example along one feature,
the llama.cpp control-vector round trip and the baked-checkpoint check.

``sae_section(model, out_dir)`` returns ``(numbers, markdown)`` like the demo stages; the files it
leaves under ``out_dir`` are small (JSON, the GGUF control vector); the baked checkpoint is deleted
after it is checked, its size reported.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

import interventions as iv
import probes
from hooked.jsonutil import write_json

# A few sentences per topic: the demo shows, for each topic, the latent that fires most on it relative to the
# other topics, and steers along the one whose steering moves the model most towards its topic's words.
TOPIC_TEXTS = {
    "weather": ["Heavy rain and a cold wind swept across the coast overnight.",
                "The storm brought thunder, lightning and hail to the valley.",
                "Bright sunshine cleared the morning fog by noon.",
                "Snow fell all night and the roads were icy by dawn.",
                "The forecast says showers and strong winds until Friday."],
    "food": ["Fresh bread was baked in the oven for an hour.",
             "The soup tasted of garlic, butter and fresh herbs.",
             "She cooked pasta with tomatoes, olive oil and basil.",
             "The chocolate cake needed more sugar and a little salt.",
             "Grilled salmon was served hot with lemon and rice."],
    "sports": ["Our football team won the championship final on Sunday.",
               "The striker scored twice in the second half.",
               "The tennis player lost the match after a long rally.",
               "The marathon runner broke the world record.",
               "The goalkeeper saved a penalty in the last minute."],
    "music": ["The orchestra played a slow melody in D minor.",
              "The guitarist tuned his strings before the concert.",
              "Her new album topped the charts for weeks.",
              "The choir sang in harmony at the festival.",
              "The piano sonata ended with a loud chord."],
    "code": ["The Python function returns a list of integers.",
             "The compiler raised a TypeError on line 42.",
             "This variable was refactored into a class attribute.",
             "The unit test imports numpy and calls the method.",
             "Our database query runs in linear time over the array."],
}
TOPIC_WORDS = {"weather": [" weather", " rain", " wind", " snow", " storm"],
               "food": [" food", " bread", " soup", " cake", " pasta"],
               "sports": [" football", " match", " team", " goal", " game"],
               "music": [" music", " song", " piano", " melody", " concert"],
               "code": [" code", " Python", " function", " variable", " programming"]}
STEER_PROMPT = "Tell me about your weekend."


def topic_latents(model, sae, topic_texts=TOPIC_TEXTS) -> dict[str, dict]:
    """Per topic, the latent whose mean activation over the topic's tokens exceeds its largest mean
    over any other topic the most: ``{topic: {latent, mean_on_topic, max_mean_elsewhere}}``."""
    topics = list(topic_texts)
    means = torch.stack([probes.capture_latents(model, sae, topic_texts[t], k=64).dense().mean(0) for t in topics])
    out = {}
    for i, t in enumerate(topics):
        elsewhere = torch.cat([means[:i], means[i + 1:]]).max(0).values
        latent = int((means[i] - elsewhere).argmax())
        out[t] = {"latent": latent, "mean_on_topic": float(means[i, latent]),
                  "max_mean_elsewhere": float(elsewhere[latent])}
    return out


@torch.no_grad()
def topic_word_gain(model, vec, alpha: float, prompt: str, words) -> float:
    """How much steering with ``vec`` at ``alpha`` raises the next-token log-prob mass of ``words``
    (first token of each) after ``prompt`` (nats)."""
    from analyses.steering_resistance import word_ids

    ids = torch.tensor(word_ids(model.tokenizer, words))
    base = torch.log_softmax(model.logits([prompt], prepend_bos=False).float(), -1)[0]
    with vec.apply(model, multiplier=float(alpha)):
        steered = torch.log_softmax(model.logits([prompt], prepend_bos=False).float(), -1)[0]
    return float(torch.logsumexp(steered[ids], 0) - torch.logsumexp(base[ids], 0))


def _chat(model, text: str) -> str:
    tok = model.tokenizer
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return text


def sae_section(model, out_dir, quick: bool = False, alphas=(0.0, 40.0, 80.0)) -> tuple[dict, str]:
    """Run the section on ``model`` (the packaged SmolLM2; the shipped SAE reads its ``resid_post.9``).
    ``quick``: fewer texts and shorter continuations (same measures)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sae = probes.smollm2_sae(model)
    texts = probes.sae_corpus(24 if quick else 64, seed=0)
    held_out = probes.sae_corpus(6 if quick else 12, seed=1)
    n_new = 6 if quick else 12  # one generation step per token and alpha

    topics = topic_latents(model, sae)
    features = probes.feature_report(model, sae, texts + [x for v in TOPIC_TEXTS.values() for x in v], n_top=5,
                                     latents=[d["latent"] for d in topics.values()])
    for (topic, d), f in zip(topics.items(), features):
        f.update(topic=topic, **d)
    recon = probes.reconstruction_metrics(model, sae, held_out)
    prompt = _chat(model, STEER_PROMPT)
    gains = {t: topic_word_gain(model, iv.latent_vector(sae, d["latent"]), alphas[1], prompt, TOPIC_WORDS[t])
             for t, d in topics.items()}
    topic = max(gains, key=gains.get)  # the feature whose steering moves the model most towards its topic
    latent, on, off = topics[topic]["latent"], topics[topic]["mean_on_topic"], topics[topic]["max_mean_elsewhere"]
    vec = iv.latent_vector(sae, latent, model_name=model.name)
    example = {}
    for a in alphas:
        with vec.apply(model, multiplier=float(a), positions="all"):
            example[float(a)] = model.generate([prompt], max_new_tokens=n_new, prepend_bos=False)[0]

    alpha = float(alphas[-1])
    gguf_path = vec.export_gguf(out / f"sae_latent_{latent}.gguf", multiplier=alpha, model_hint=model.arch)
    back = iv.SteeringVector.import_gguf(gguf_path)
    enc = model.tokenize([prompt], prepend_bos=False)
    with back.apply(model, multiplier=1.0):
        via_gguf = model.forward(enc["input_ids"], enc["attention_mask"]).float()
    with vec.apply(model, multiplier=alpha):
        via_hooks = model.forward(enc["input_ids"], enc["attention_mask"]).float()
    gguf_vec_diff = float((back[sae.site] - alpha * vec[sae.site]).abs().max())
    gguf_logit_diff = float((via_gguf - via_hooks).abs().max())

    baked_dir = out / "baked_checkpoint"
    iv.bake(model, vec, alpha, baked_dir, verify=False)  # checked on the demo prompt below (one reload)
    bake_diff = iv.baked_logit_difference(model, vec, alpha, baked_dir, prompts=[prompt])
    bake_mb = sum(f.stat().st_size for f in baked_dir.iterdir()) / 2**20
    shutil.rmtree(baked_dir)

    numbers = {
        "sae": {"site": sae.site, "d_sae": sae.d_sae, "k": sae.k, "n_held_out_texts": len(held_out), **recon},
        "features": features,
        "steering": {"topic": topic, "latent": latent, "mean_on_topic": on, "max_mean_other_topic": off,
                     "topic_word_gain_nats": gains, "prompt": STEER_PROMPT,
                     "continuations": {str(a): t for a, t in example.items()}},
        "gguf": {"file": gguf_path.name, "bytes": gguf_path.stat().st_size, "multiplier": alpha,
                 "max_vector_diff": gguf_vec_diff, "max_logit_diff": gguf_logit_diff},
        "bake": {"multiplier": alpha, "max_logit_diff": bake_diff, "checkpoint_mb": round(bake_mb, 1)},
    }
    write_json(out / "sae_section.json", numbers)

    md = [f"The shipped TopK SAE ({sae.d_sae} latents, k = {sae.k}) reads `{sae.site}` of `{model.name}`. "
          f"On {len(held_out)} held-out texts: fraction of variance explained "
          f"{recon['fve']:.3f}, L0 {recon['l0']:.1f}, CE loss recovered {recon['ce_loss_recovered']:.3f} "
          f"(next-token CE {recon['ce_clean']:.3f} clean, {recon['ce_spliced']:.3f} with the reconstruction spliced "
          f"in, {recon['ce_zero_ablated']:.3f} with the site zeroed), KL recovered {recon['kl_recovered']:.3f}.\n",
          "Per topic, the latent most selective for it (mean activation on the topic's tokens minus its largest "
          "mean on another topic), with its top-activating tokens on the corpus:\n",
          "| topic | latent | mean on topic / elsewhere | frequency | top-activating tokens (token in [[ ]]) |",
          "|---|---|---|---|---|"]
    for f in features:
        tops = "; ".join(f"`{t['context'].strip()}` ({t['value']:.1f})" for t in f["top"][:3])
        md.append(f"| {f['topic']} | {f['latent']} | {f['mean_on_topic']:.2f} / {f['max_mean_elsewhere']:.2f} | "
                  f"{f['frequency']:.3f} | {tops.replace('|', '/')} |")
    md.append("\nSteering along each topic latent at alpha = " + f"{alphas[1]:g} raises the next-token log-prob of its "
              "topic's words by " + ", ".join(f"{t} {g:+.2f}" for t, g in gains.items()) + " nats. "
              f"Steering along the {topic} latent {latent} (mean activation {on:.2f} on {topic} tokens, at most "
              f"{off:.2f} on another topic's), "
              f"`x + alpha * W_dec[{latent}]` at `{sae.site}` on every token, greedy, prompt "
              f"\"{STEER_PROMPT}\" (chat template):\n")
    md += ["| alpha | continuation |", "|---|---|"]
    md += [f"| {a:g} | {t.strip().replace(chr(10), ' ').replace('|', '/')} |" for a, t in example.items()]
    md.append(f"\nPortable forms of the same steering at alpha = {alpha:g}: the llama.cpp control vector "
              f"`{gguf_path.name}` ({gguf_path.stat().st_size} bytes, `direction.9`; use with "
              f"`llama-cli --control-vector {gguf_path.name}`) reads back with max |difference| {gguf_vec_diff:.2g} "
              f"in the vector and {gguf_logit_diff:.2g} in the logits; the baked `transformers` checkpoint "
              f"({bake_mb:.0f} MB, deleted after the check) gives logits within {bake_diff:.2g} of the hooked model "
              "at every position. Evaluate a baked checkpoint with lm-evaluation-harness as "
              "`lm_eval --model hf --model_args pretrained=DIR --tasks ...`.")
    return numbers, "\n".join(md)
