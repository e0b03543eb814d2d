"""Acceptance on the packaged SmolLM2-135M-Instruct: a sentiment vector from the built-in
pairs, added at a middle layer, moves the ' good' - ' bad' logit difference and the
lexicon sentiment of greedy continuations monotonically with the multiplier."""

import pytest

import interventions as iv

LAYER = "resid_post.12"


@pytest.fixture(scope="module")
def sentiment_vec(smollm2_tl):
    return iv.extract(smollm2_tl, iv.data.sentiment_pairs(), LAYER)


@pytest.mark.acceptance
def test_logit_difference_rises_with_multiplier(smollm2_tl, sentiment_vec):
    res = iv.multiplier_sweep(smollm2_tl, sentiment_vec, iv.data.NEUTRAL_PROMPTS[:4], " good", " bad", [-4.0, 0.0, 4.0])
    means = res.mean_metric.tolist()
    assert means[0] < means[1] < means[2], means
    assert res.steerability > 0.2 and res.anti_steerable_fraction <= 0.25


@pytest.mark.acceptance
def test_generated_sentiment_rises_with_multiplier(smollm2_tl, sentiment_vec):
    sweep = iv.generation_sweep(
        smollm2_tl, sentiment_vec, iv.data.NEUTRAL_PROMPTS[:2], multipliers=[-4.0, 0.0, 4.0], max_new_tokens=12
    )
    assert sweep.slope > 0, sweep.to_dict()
    assert sweep.mean_scores[0] < sweep.mean_scores[-1], sweep.to_dict()
