"""Latent runner, operators and the prefix-reuse sweep on tiny random HF models."""
import pytest
import torch

from interventions.latent_cot import (GaussianNoise, Identity, LatentRunner, LatentStats, Patch, ProjectOut,
                                      PureNoise, Replace, StepMean, Swap, Zero, make_operator, sweep_steps)

V, BOT, EOT, ANS = 40, 37, 38, 39


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(cfg).eval()


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=128)).eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def runner(request):
    model = _llama() if request.param == "llama" else _gpt2()
    return LatentRunner(model, bot_id=BOT, eot_id=EOT, answer_prefix_ids=[ANS])


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(1)
    q = torch.randint(0, 30, (5, 9), generator=gen)
    mask = torch.ones_like(q)
    mask[0, :3] = 0          # left padding on two rows
    mask[3, :1] = 0
    return q, mask, torch.randint(0, 30, (5, 2), generator=gen)


K = 4


@torch.no_grad()
def test_cache_equals_no_cache(runner, batch):
    q, mask, ans = batch
    a = runner.rollout(q, mask, n_latents=K, answer_ids=ans)
    b = runner.rollout(q, mask, n_latents=K, answer_ids=ans, use_cache=False)
    assert a.latents.shape == (5, K, 32) and a.readout_logits.shape == (5, K + 1, V)
    torch.testing.assert_close(a.latents, b.latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.readout_logits, b.readout_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.answer_logp, b.answer_logp, atol=1e-4, rtol=1e-4)
    assert (a.answer_logp < 0).all()


@torch.no_grad()
def test_latent_is_last_hidden_state_fed_back(runner, batch):
    """h_0 is the final hidden state at <bot>; h_1 the one at the slot fed h_0 (Coconut)."""
    q, mask, _ = batch
    roll = runner.rollout(q[1:2], n_latents=2)
    model = runner.model
    ids = torch.cat([q[1:2], torch.tensor([[BOT]])], 1)
    out = model(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(roll.latents[:, 0], out.hidden_states[-1][:, -1], atol=1e-5, rtol=1e-5)
    emb = torch.cat([model.get_input_embeddings()(ids), roll.latents[:, :1]], 1)
    out = model(inputs_embeds=emb, output_hidden_states=True)
    torch.testing.assert_close(roll.latents[:, 1], out.hidden_states[-1][:, -1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_identity_intervention_is_bit_identical(runner, batch):
    q, mask, ans = batch
    a = runner.rollout(q, mask, n_latents=K, answer_ids=ans)
    b = runner.rollout(q, mask, n_latents=K, answer_ids=ans, interventions={t: Identity() for t in range(K)})
    c = runner.rollout(q, mask, n_latents=K, answer_ids=ans, interventions={1: lambda h, ctx: None})
    for other in (b, c):
        assert torch.equal(a.latents, other.latents) and torch.equal(a.readout_logits, other.readout_logits)


@torch.no_grad()
def test_zero_changes_only_following_states(runner, batch):
    q, mask, ans = batch
    a = runner.rollout(q, mask, n_latents=K, answer_ids=ans)
    b = runner.rollout(q, mask, n_latents=K, answer_ids=ans, interventions={1: Zero()})
    assert torch.equal(b.latents[:, :1], a.latents[:, :1])               # before: untouched
    assert torch.equal(b.pre_latents[:, 1], a.latents[:, 1])              # the read value is the clean one
    assert torch.count_nonzero(b.latents[:, 1]) == 0                      # do(h_1 := 0)
    assert ((b.latents[:, 2:] - a.latents[:, 2:]).norm(dim=-1) > 1e-3).all()   # every later state moved
    assert torch.equal(b.readout_logits[:, :2], a.readout_logits[:, :2])  # exits before step 1 unchanged
    assert not torch.allclose(b.readout_logits[:, 2:], a.readout_logits[:, 2:])


@torch.no_grad()
def test_swap_with_itself_is_identity_and_swap_moves_rows(runner, batch):
    q, mask, ans = batch
    a = runner.rollout(q, mask, n_latents=K, answer_ids=ans)
    same = runner.rollout(q, mask, n_latents=K, answer_ids=ans, interventions={2: Swap(torch.arange(5))})
    assert torch.equal(a.latents, same.latents) and torch.equal(a.readout_logits, same.readout_logits)
    moved = runner.rollout(q, mask, n_latents=K, answer_ids=ans, interventions={2: Swap()})
    assert torch.equal(moved.latents[:, 2], a.latents[torch.roll(torch.arange(5), -1), 2])


@torch.no_grad()
def test_exit_after_matches_prefix_of_full_rollout(runner, batch):
    q, mask, ans = batch
    a = runner.rollout(q, mask, n_latents=K, answer_ids=ans)
    e = runner.rollout(q, mask, n_latents=K, answer_ids=ans, exit_after=1)
    assert e.latents.shape[1] == 2 and e.readout_logits.shape[1] == 3
    torch.testing.assert_close(e.readout_logits, a.readout_logits[:, :3])


@torch.no_grad()
@pytest.mark.parametrize("name", ["zero", "step_mean", "noise", "swap", "patch"])
def test_sweep_with_prefix_reuse_equals_rollouts_from_start(runner, batch, name):
    q, mask, ans = batch
    clean = runner.rollout(q, mask, n_latents=K, answer_ids=ans)
    stats = LatentStats.from_latents(clean.latents)
    extra = {"patch": {"source": torch.randn(5, K, 32)}}.get(name, {})
    op = make_operator(name, None if extra else stats, **extra)
    fast = sweep_steps(runner, q, mask, n_latents=K, operator=op, answer_ids=ans)
    slow = sweep_steps(runner, q, mask, n_latents=K, operator=op, answer_ids=ans, reuse_prefix=False)
    torch.testing.assert_close(fast.clean.readout_logits, clean.readout_logits, atol=1e-5, rtol=1e-5)
    for f, s in zip(fast.intervened, slow.intervened):
        torch.testing.assert_close(f.latents, s.latents, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(f.readout_logits, s.readout_logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(f.answer_logp, s.answer_logp, atol=1e-4, rtol=1e-4)
    assert fast.steps == list(range(K))


@torch.no_grad()
def test_final_readout_only(runner, batch):
    q, mask, ans = batch
    a = runner.rollout(q, mask, n_latents=K, answer_ids=ans)
    f = runner.rollout(q, mask, n_latents=K, answer_ids=ans, readout="final")
    torch.testing.assert_close(f.latents, a.latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f.readout_logits[:, -1], a.readout_logits[:, -1], atol=1e-4, rtol=1e-4)
    assert torch.isnan(f.readout_logits[:, :-1]).all() and torch.isnan(f.answer_logp[:, :-1]).all()
    op = Zero()
    fast = sweep_steps(runner, q, mask, n_latents=K, operator=op, answer_ids=ans, readout="final")
    slow = sweep_steps(runner, q, mask, n_latents=K, operator=op, answer_ids=ans)
    for x, y in zip(fast.intervened, slow.intervened):
        torch.testing.assert_close(x.readout_logits[:, -1], y.readout_logits[:, -1], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="readout must be"):
        runner.rollout(q, mask, n_latents=K, readout="every")


@torch.no_grad()
def test_codi_projection(batch):
    q, mask, ans = batch
    torch.manual_seed(3)
    proj = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU(), torch.nn.LayerNorm(32))
    runner = LatentRunner(_llama(), bot_id=BOT, eot_id=EOT, projection=proj)
    a = runner.rollout(q, mask, n_latents=3, answer_ids=ans)
    b = runner.rollout(q, mask, n_latents=3, answer_ids=ans, use_cache=False)
    torch.testing.assert_close(a.latents, proj(a.hidden), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a.readout_logits, b.readout_logits, atol=1e-4, rtol=1e-4)


def test_operators_do_what_they_say():
    gen = torch.Generator().manual_seed(0)
    lat = torch.randn(64, 3, 16, generator=gen) * 2
    stats = LatentStats.from_latents(lat)
    from interventions.latent_cot import StepContext
    ctx = StepContext(1, 3, torch.arange(64))
    h = lat[:, 1]
    torch.testing.assert_close(StepMean(stats)(h, ctx), lat[:, 1].mean(0).expand(64, 16))
    noise = GaussianNoise(stats, sigma=0.5)(h, ctx) - h
    assert abs(noise.norm(dim=-1).mean().item() / stats.mean_norm - 0.5) < 0.05
    torch.testing.assert_close(GaussianNoise(stats, 0.5)(h, ctx), GaussianNoise(stats, 0.5)(h, ctx))
    # pure noise: the reference's sigma_scale = 0.5, i.e. half the mean latent norm (not the full norm)
    pure = PureNoise(stats)(h, ctx)
    assert abs(pure.norm(dim=-1).mean().item() / stats.mean_norm - 0.5) < 0.05
    assert abs(make_operator("pure_noise", stats, sigma=1.0)(h, ctx).norm(dim=-1).mean().item()
               / stats.mean_norm - 1.0) < 0.1
    u = torch.randn(16, generator=gen)
    assert (ProjectOut(u)(h, ctx) @ u).abs().max() < 1e-4
    src = torch.randn(64, 3, 16, generator=gen)
    assert torch.equal(Patch(src)(h, ctx), src[:, 1])


def test_bad_input_raises_clear_errors(batch):
    q, mask, ans = batch
    runner = LatentRunner(_llama(), bot_id=BOT, eot_id=EOT)
    with pytest.raises(ValueError, match="positive int"):
        runner.rollout(q, mask, n_latents=0)
    with pytest.raises(ValueError, match=r"out of range.*0\.\.2"):
        runner.rollout(q, mask, n_latents=3, interventions={3: Zero()})
    with pytest.raises(ValueError, match=r"out of range"):
        sweep_steps(runner, q, mask, n_latents=3, operator=Zero(), steps=[5])
    with pytest.raises(ValueError, match=r"width 7.*width 32"):
        runner.rollout(q, mask, n_latents=3, interventions={0: Replace(torch.zeros(7))})
    with pytest.raises(ValueError, match=r"returned \(5, 31\)"):
        runner.rollout(q, mask, n_latents=3, interventions={0: lambda h, ctx: h[:, :31]})
    with pytest.raises(ValueError, match="outside the model's embedding table"):
        LatentRunner(_llama(), bot_id=V + 5, eot_id=EOT)
    with pytest.raises(ValueError, match="Unknown latent operator"):
        make_operator("scramble")


def test_model_without_thought_tokens_is_rejected():
    class Tok:
        def get_vocab(self):
            return {"a": 0, "b": 1}
    with pytest.raises(ValueError, match=r"no thought token '<\|start-latent\|>'.*add_special_tokens"):
        LatentRunner(_llama(), tokenizer=Tok())
    with pytest.raises(ValueError, match="No bot_id given and no tokenizer"):
        LatentRunner(_llama())


@torch.no_grad()
def test_batched_readouts_equal_rerunning_from_the_start(runner, batch):
    """One read-out pass over all steps (block mask over the shared cache) gives the read-outs of
    closing the thought after n latents and re-running, within fp32 rounding, for the rollout and
    for every row group of the prefix-reuse sweep."""
    q, mask, ans = batch
    seq = runner.rollout(q, mask, n_latents=K, answer_ids=ans, batched_readout=False)
    fast = runner.rollout(q, mask, n_latents=K, answer_ids=ans)
    assert (fast.readout_logits - seq.readout_logits).abs().max() < 1e-4
    assert (fast.answer_logp - seq.answer_logp).abs().max() < 1e-4
    for n in range(K + 1):     # and each equals an early exit after n steps run on its own
        alone = runner.rollout(q, mask, n_latents=K, answer_ids=ans, exit_after=n - 1) if n else None
        if alone is not None:
            assert (alone.readout_logits[:, -1] - fast.readout_logits[:, n]).abs().max() < 1e-4
    op = Zero()
    sweep = sweep_steps(runner, q, mask, n_latents=K, operator=op, answer_ids=ans)
    ref = sweep_steps(runner, q, mask, n_latents=K, operator=op, answer_ids=ans, reuse_prefix=False,
                      batched_readout=False)
    for f, s in zip(sweep.intervened, ref.intervened):
        assert (f.readout_logits - s.readout_logits).abs().max() < 1e-4
        assert (f.answer_logp - s.answer_logp).abs().max() < 1e-4
