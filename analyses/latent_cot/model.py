"""The tiny latent reasoner: a small Llama-architecture HF causal LM over a task vocabulary,
saved as safetensors + JSON (never pickle)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from hooked import artifacts
from interventions.latent_cot import LatentRunner

from .tasks import make_task

MODES = ("coconut", "pause")
_FORMAT = "policylens.latent_cot/1"
_META = "config.json"
_WEIGHTS = "model.safetensors"


@dataclass
class ReasonerConfig:
    """Task, architecture and mode. ``mode``: "coconut" feeds the last hidden state back at every
    latent slot; "pause" (the control) feeds the fixed learned ``<pause>`` embedding there."""

    task: dict = field(default_factory=lambda: {"task": "pointer_chasing", "n_nodes": 8, "hops": 3})
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int = 256
    mode: str = "coconut"
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}.")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}.")


class TinyReasoner:
    """An HF ``LlamaForCausalLM`` plus its task; ``runner()`` gives the latent runner over it."""

    def __init__(self, config: ReasonerConfig, model=None):
        from transformers import LlamaConfig, LlamaForCausalLM

        self.config = config
        task_kwargs = {k: v for k, v in config.task.items() if k != "task"}
        self.task = make_task(config.task["task"], **task_kwargs)
        self.vocab = self.task.vocab
        if model is None:
            torch.manual_seed(config.seed)
            hf_config = LlamaConfig(vocab_size=self.vocab.size, hidden_size=config.d_model,
                                    intermediate_size=config.d_mlp, num_hidden_layers=config.n_layers,
                                    num_attention_heads=config.n_heads, num_key_value_heads=config.n_heads,
                                    max_position_embeddings=256, tie_word_embeddings=True,
                                    bos_token_id=None, eos_token_id=None, pad_token_id=None)
            hf_config._attn_implementation = "eager"
            model = LlamaForCausalLM(hf_config)
            self._factorised_edge_init(model)
        self.model = model

    def _factorised_edge_init(self, model) -> None:
        """Initialise E{u}>{v} = a_u + b_v and N_v = a_v + b_v from random a, b, so the edge tokens
        start out sharing their endpoints' directions (a shorter plateau before the lookup head
        forms). All embeddings get unit-variance entries, the scale of the final-normed hidden
        state that Coconut feeds back, so a recycled latent does not swamp the residual stream.
        Training then updates all rows freely."""
        emb = model.get_input_embeddings().weight
        n, std = self.vocab.n_nodes, 0.5 ** 0.5
        a, b = torch.randn(n, emb.shape[1]) * std, torch.randn(n, emb.shape[1]) * std
        with torch.no_grad():
            emb.normal_(0.0, 1.0)
            emb[:n] = a + b
            emb[n:self.vocab.n_regular] = (a[:, None] + b[None, :]).reshape(n * n, -1)

    @property
    def n_steps(self) -> int:
        return self.task.n_steps

    def runner(self) -> LatentRunner:
        if self.config.mode != "coconut":
            raise ValueError(f"This reasoner was trained in {self.config.mode!r} mode, which feeds a fixed embedding "
                             "at the thought slots; the latent runner needs a coconut-mode reasoner.")
        return LatentRunner(self.model, bot_id=self.vocab.bot, eot_id=self.vocab.eot,
                            answer_prefix_ids=[self.vocab.ans])

    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        artifacts.write_module(directory / _WEIGHTS, self.model)  # handles the tied embedding / lm_head
        artifacts.write_meta(directory / _META, {"reasoner": asdict(self.config)}, _FORMAT)
        return directory

    @classmethod
    def load(cls, directory) -> "TinyReasoner":
        directory = artifacts.require(directory, _META, _WEIGHTS, what="latent reasoner", writer="TinyReasoner.save")
        meta = artifacts.read_meta(directory / _META, _FORMAT, "latent reasoner")
        try:
            config = ReasonerConfig(**meta["reasoner"])
        except (KeyError, TypeError) as e:
            raise artifacts.ArtifactError(f"{str(directory / _META)!r} holds no valid reasoner config ({e}).") from None
        reasoner = cls(config)
        artifacts.read_module(directory / _WEIGHTS, reasoner.model, "latent reasoner")
        reasoner.model.eval()
        return reasoner
