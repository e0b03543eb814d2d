"""A small TopK SAE trainer (torch, CPU-friendly), and a trained SAE for the packaged SmolLM2.

TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", arXiv 2406.04093):

    z = TopK(W_enc^T (x - b_pre) + b_enc)    (ReLU on the kept k entries)
    x_hat = W_dec^T z + b_pre
    L = ||x - x_hat||^2 / ||x - mean(x)||^2 + alpha_aux * ||e - e_hat||^2 / ||e - mean(e)||^2

``e = x - x_hat`` and ``e_hat = W_dec^T TopK_aux(pre-activations of dead latents)`` with
``k_aux`` latents (the AuxK loss, Gao et al. Sec. A.2; ``alpha_aux = 1/32``), a latent being
dead when it fired on none of the last ``dead_after`` training tokens. As in the paper:
``b_pre`` is initialised to the data mean, ``W_enc = W_dec^T`` at init, decoder rows are kept
at unit norm after every step. The result is a SAELens-format :class:`~probes.sae.SAE`
(``architecture="topk"``, ``b_dec = b_pre``) so it saves and loads like any SAELens SAE.

>>> trainer = probes.TopKSAETrainer(d_sae=1024, k=32, steps=2000).fit(X)   # X: [n_tokens, d]
>>> sae = trainer.sae_
>>> sae = probes.smollm2_sae(model)          # the shipped SAE for smollm2-135m-instruct (resid_post.9)
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from .sae import SAE

SMOLLM2_SAE_DIR = Path(__file__).parent / "data" / "sae_smollm2_resid_post_9"
SMOLLM2_SITE = "resid_post.9"


class TopKSAETrainer:
    """Train a TopK SAE on activations ``X`` ``[n, d_in]`` (see module docstring for the objective).

    Parameters are stored as given; :meth:`fit` returns ``self`` with ``sae_`` (the SAE),
    ``history_`` (loss, normalised MSE, dead fraction per logged step) and ``fit_seconds_``.
    """

    def __init__(self, d_sae: int = 1024, k: int = 32, steps: int = 2000, batch_size: int = 1024, lr: float = 1e-3,
                 aux_k: int | None = None, aux_coef: float = 1 / 32, dead_after: int = 50_000, seed: int = 0,
                 site: str | None = None, model_name: str | None = None, log_every: int = 100):
        self.d_sae, self.k, self.steps, self.batch_size, self.lr = d_sae, k, steps, batch_size, lr
        self.aux_k, self.aux_coef, self.dead_after, self.seed = aux_k, aux_coef, dead_after, seed
        self.site, self.model_name, self.log_every = site, model_name, log_every

    def fit(self, X: torch.Tensor) -> "TopKSAETrainer":
        X = torch.as_tensor(X).float()
        if X.dim() != 2 or X.shape[0] < 2:
            raise ValueError(f"X must be [n_tokens, d_in] with n_tokens >= 2; got shape {tuple(X.shape)}.")
        if not 1 <= self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae={self.d_sae}; got k={self.k}.")
        n, d = X.shape
        g = torch.Generator().manual_seed(self.seed)
        W_dec = torch.randn(self.d_sae, d, generator=g)
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        W_dec = torch.nn.Parameter(W_dec)
        W_enc = torch.nn.Parameter(W_dec.detach().T.clone())
        b_enc = torch.nn.Parameter(torch.zeros(self.d_sae))
        b_dec = torch.nn.Parameter(X.mean(0).clone())
        params = [W_enc, W_dec, b_enc, b_dec]
        opt = torch.optim.Adam(params, lr=self.lr)
        aux_k = self.aux_k or max(1, d // 2)
        since_fired = torch.zeros(self.d_sae, dtype=torch.long)
        bs = min(self.batch_size, n)
        history = []
        t0 = time.perf_counter()
        for step in range(self.steps):
            idx = torch.randint(0, n, (bs,), generator=g)
            x = X[idx]
            pre = (x - b_dec) @ W_enc + b_enc
            vals, ind = pre.topk(self.k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, ind, vals.relu())
            x_hat = z @ W_dec + b_dec
            var = (x - x.mean(0)).pow(2).sum()
            mse = (x - x_hat).pow(2).sum() / var
            fired = torch.zeros(self.d_sae, dtype=torch.bool)
            fired[ind[vals > 0]] = True
            since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + bs)
            dead = since_fired >= self.dead_after
            loss = mse
            if bool(dead.any()) and self.aux_coef > 0:
                e = (x - x_hat).detach()
                pre_dead = pre.masked_fill(~dead, float("-inf"))
                ka = min(aux_k, int(dead.sum()))
                av, ai = pre_dead.topk(ka, dim=-1)
                z_aux = torch.zeros_like(pre).scatter(-1, ai, av.relu())
                e_hat = z_aux @ W_dec
                aux = (e - e_hat).pow(2).sum() / (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)
                loss = loss + self.aux_coef * torch.nan_to_num(aux, nan=0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():  # drop the gradient that would change decoder norms (Gao et al. A.4)
                W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
            opt.step()
            with torch.no_grad():
                W_dec /= W_dec.norm(dim=1, keepdim=True)
            if step % self.log_every == 0 or step == self.steps - 1:
                history.append({"step": step, "loss": float(loss.detach()), "nmse": float(mse.detach()),
                                "dead_fraction": float(dead.float().mean())})
        self.fit_seconds_ = time.perf_counter() - t0
        self.history_ = history
        meta = {"model_name": self.model_name, "trained_with": "policylens.TopKSAETrainer",
                "train_tokens": int(n), "train_steps": self.steps}
        if self.site:
            from .sae import hook_for_site
            meta["hook_name"] = hook_for_site(self.site)
        self.sae_ = SAE("topk", {"W_enc": W_enc.detach(), "W_dec": W_dec.detach(), "b_enc": b_enc.detach(),
                                 "b_dec": b_dec.detach()}, k=self.k, metadata=meta)
        return self


# ---------------------------------------------------------------------- a corpus we generate
_TOPICS = {
    "food": (["The soup", "Fresh bread", "The chocolate cake", "A bowl of pasta", "Grilled salmon", "The cheese"],
             ["tasted delicious with a pinch of salt", "was baked in the oven for an hour",
              "smelled of garlic, butter and fresh herbs", "was served hot at the restaurant",
              "needed more pepper and a little lemon"]),
    "sports": (["The striker", "Our football team", "The tennis player", "The goalkeeper", "The marathon runner"],
               ["scored twice in the second half", "won the championship final on Sunday",
                "trained hard before the match", "lost the game after a late penalty", "broke the world record"]),
    "weather": (["The storm", "Heavy rain", "A cold wind", "The morning fog", "Bright sunshine", "The snow"],
                ["swept across the coast overnight", "kept everyone indoors all afternoon",
                 "made the roads icy and dangerous", "cleared by noon, leaving a blue sky",
                 "was forecast to last until Friday"]),
    "code": (["The Python function", "This variable", "The compiler", "Our database query", "The unit test"],
             ["returns a list of integers", "raised a TypeError on line 42", "was refactored into a class",
              "runs in linear time over the array", "imports numpy and calls the method"]),
    "music": (["The orchestra", "The guitarist", "Her new album", "The piano sonata", "The choir"],
              ["played a slow melody in D minor", "sang in harmony at the concert", "topped the charts for weeks",
               "was recorded live in the studio", "ended with a loud drum solo"]),
    "animals": (["The dog", "A small cat", "The elephant", "The eagle", "A family of rabbits"],
                ["slept under the warm blanket", "chased the ball across the garden", "hunted for fish in the river",
                 "ate carrots and grass in the field", "barked at the postman every morning"]),
    "money": (["The bank", "Stock prices", "The company", "Inflation", "The central bank"],
              ["raised interest rates by half a percent", "fell sharply after the report",
               "paid a dividend of three dollars per share", "invested millions in new factories",
               "rose to its highest level in a decade"]),
    "places": (["Paris", "Tokyo", "The mountain village", "London", "The desert town", "Rome"],
               ["is famous for its museums and old churches", "was crowded with tourists in July",
                "lies on the banks of a wide river", "has a busy train station in the centre",
                "attracts visitors from around the world"]),
}
_FEELINGS = ["I was happy about it.", "Everyone was surprised.", "Nobody expected that.", "It made me sad.",
             "What a wonderful day!", "That was terrible news.", "We laughed for hours.", "It felt strange."]
_NUMBERS = ["In {y}, {a} people came.", "It cost {a} dollars.", "The total was {a} plus {b}, which is {c}.",
            "Chapter {b} begins on page {a}.", "The train left at {b}:{a2} and arrived {b2} minutes late."]


def corpus(n: int = 600, seed: int = 0) -> list[str]:
    """``n`` short English texts across topics (food, sports, weather, code, music, animals, money,
    places), with feelings and numbers mixed in; generated deterministically from ``seed``."""
    rng = random.Random(seed)
    topics = sorted(_TOPICS)
    out = []
    for i in range(n):
        topic = topics[i % len(topics)]
        subjects, preds = _TOPICS[topic]
        parts = []
        for _ in range(rng.randint(2, 3)):
            parts.append(f"{rng.choice(subjects)} {rng.choice(preds)}.")
        if rng.random() < 0.5:
            parts.append(rng.choice(_FEELINGS))
        if rng.random() < 0.4:
            a, b = rng.randint(2, 99), rng.randint(1, 12)
            parts.append(rng.choice(_NUMBERS).format(y=rng.randint(1900, 2024), a=a, b=b, c=a + b,
                                                     a2=f"{rng.randint(0, 59):02d}", b2=rng.randint(2, 30)))
        rng.shuffle(parts)
        out.append(" ".join(parts))
    return out


# ---------------------------------------------------------------------- the SmolLM2 SAE
def train_model_sae(model, site: str = SMOLLM2_SITE, texts=None, d_sae: int = 1024, k: int = 32, steps: int = 800,
                    seed: int = 0, batch_size: int = 16) -> TopKSAETrainer:
    """Capture ``site`` on every real token of ``texts`` (default :func:`corpus`) and fit a TopK SAE."""
    texts = corpus() if texts is None else list(texts)
    acts = model.capture(texts, site, positions="all", batch_size=batch_size)[site].float()
    trainer = TopKSAETrainer(d_sae=d_sae, k=k, steps=steps, batch_size=512, lr=2e-3, dead_after=20_000, seed=seed,
                             site=site, model_name=model.name)
    return trainer.fit(acts)


def smollm2_sae(model=None, retrain: bool = False, save_to=None) -> SAE:
    """The TopK SAE (1024 latents, k=32) for ``smollm2-135m-instruct`` at ``resid_post.9``.

    Loads the shipped weights (``probes/data/sae_smollm2_resid_post_9``, SAELens layout,
    stored in float16) unless ``retrain``; retraining needs ``model`` and takes a few
    minutes on CPU (capture of :func:`corpus`, ~19k tokens, + 800 Adam steps of 512 tokens). ``save_to`` writes the
    retrained SAE there.
    """
    if not retrain and (SMOLLM2_SAE_DIR / "cfg.json").exists():
        return SAE.load(SMOLLM2_SAE_DIR)
    if model is None:
        raise ValueError("No shipped SAE found (or retrain=True): pass the model, e.g. "
                         "smollm2_sae(hooked.load_model('smollm2-135m-instruct'), retrain=True).")
    trainer = train_model_sae(model)
    sae = trainer.sae_
    sae.metadata["fit_seconds"] = round(trainer.fit_seconds_, 1)
    if save_to is not None:
        sae.save(save_to, weights_dtype=torch.float16)
        (Path(save_to) / "training_history.json").write_text(json.dumps(trainer.history_))
    return sae
