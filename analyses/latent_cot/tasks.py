"""Synthetic multi-hop tasks whose intermediate steps are an explicit chain of thought.

Token layout (shared by both tasks, ``TaskVocab``): node tokens ``N0..N{n-1}``, one token
``E{u}>{v}`` per directed edge u -> v, then ``<q>``, ``<bot>``, ``<eot>``, ``<ans>``,
``<pause>``. One token per pair makes a hop a single attention lookup (query: the current
node; key: the edge's source; value: its target), so a 2-layer model can do one hop per
step, but not several hops in one forward pass.

A sequence is ``question <bot> [CoT steps or latents] <eot> [remaining CoT] <ans> answer``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TaskVocab:
    n_nodes: int

    def node(self, v):
        return v

    def edge(self, u, v):
        return self.n_nodes + u * self.n_nodes + v

    @property
    def n_regular(self):
        return self.n_nodes + self.n_nodes ** 2

    @property
    def q(self):
        return self.n_regular

    @property
    def bot(self):
        return self.n_regular + 1

    @property
    def eot(self):
        return self.n_regular + 2

    @property
    def ans(self):
        return self.n_regular + 3

    @property
    def pause(self):
        return self.n_regular + 4

    @property
    def size(self):
        return self.n_regular + 5

    def decode(self, token: int) -> str:
        n = self.n_nodes
        if token < n:
            return f"N{token}"
        if token < self.n_regular:
            u, v = divmod(token - n, n)
            return f"E{u}>{v}"
        return ["<q>", "<bot>", "<eot>", "<ans>", "<pause>"][token - self.n_regular]


@dataclass
class TaskBatch:
    question: torch.Tensor  # [N, L_q] (without <bot>)
    chain: torch.Tensor     # [N, K] explicit CoT tokens (target-node tokens)
    answer: torch.Tensor    # [N] answer token

    def __len__(self):
        return self.question.shape[0]

    def subset(self, idx) -> "TaskBatch":
        return TaskBatch(self.question[idx], self.chain[idx], self.answer[idx])


class PointerChasing:
    """In-context pointer chasing: the n pairs (u, pi(u)) of a random permutation pi as edge
    tokens in a random order, then ``<q> N_s``. CoT: c_0 = s (the start restated), then
    c_i = pi^i(s) for i = 1..hops; answer = pi^hops(s); so K = hops + 1 steps.

    Restating the start makes every step a single operation (copy, then one lookup per hop);
    without it the first hop at ``<bot>`` needs a two-layer composition (find the start, then
    look it up), which a 2-layer model learned on some seeds only within our budget."""

    name = "pointer_chasing"

    def __init__(self, n_nodes: int = 8, hops: int = 3):
        if n_nodes < 2 or hops < 1:
            raise ValueError(f"PointerChasing needs n_nodes >= 2 and hops >= 1, got n_nodes={n_nodes}, hops={hops}.")
        self.vocab, self.n_nodes, self.hops = TaskVocab(n_nodes), n_nodes, hops

    @property
    def n_steps(self) -> int:
        return self.hops + 1

    def config(self) -> dict:
        return {"task": self.name, "n_nodes": self.n_nodes, "hops": self.hops}

    def sample(self, n: int, gen: torch.Generator, starts: torch.Tensor | None = None,
               perms: torch.Tensor | None = None, orders: torch.Tensor | None = None) -> TaskBatch:
        """``n`` questions; pass ``perms``/``orders`` of an earlier call with new ``starts`` for counterfactuals."""
        N = self.n_nodes
        perms = torch.argsort(torch.rand(n, N, generator=gen), 1) if perms is None else perms
        orders = torch.argsort(torch.rand(n, N, generator=gen), 1) if orders is None else orders
        starts = torch.randint(0, N, (n,), generator=gen) if starts is None else starts
        edges = self.vocab.edge(orders, perms.gather(1, orders))
        question = torch.cat([edges, torch.full((n, 1), self.vocab.q), starts[:, None]], 1)
        node, chain = starts, [starts]
        for _ in range(self.hops):
            node = perms.gather(1, node[:, None])[:, 0]
            chain.append(node)
        chain = torch.stack(chain, 1)
        self.last_sample = {"perms": perms, "orders": orders, "starts": starts}
        return TaskBatch(question, chain, chain[:, -1].clone())

    def counterfactual(self, gen: torch.Generator, n: int) -> tuple[TaskBatch, TaskBatch]:
        """Pairs of questions on the same permutation and pair order but different start nodes."""
        base = self.sample(n, gen)
        info = self.last_sample
        shift = torch.randint(1, self.n_nodes, (n,), generator=gen)
        other = self.sample(n, gen, starts=(info["starts"] + shift) % self.n_nodes, perms=info["perms"],
                            orders=info["orders"])
        return base, other


class GraphReachability:
    """ProsQA-like reachability: a random DAG on n nodes written as shuffled edge tokens,
    then ``<q> N_start N_x N_y``; exactly one of x, y is reachable from start, by a path of
    ``hops`` edges. CoT = the path's nodes c_0 = start, c_1..c_hops (c_hops is the reachable candidate);
    answer = that candidate. The other candidate lies in a part of the graph with no edge
    into it from the start's side."""

    name = "graph_reachability"

    def __init__(self, n_nodes: int = 12, hops: int = 3, n_edges: int = 10):
        if n_nodes < 2 * (hops + 1) or n_edges < hops + 1:
            raise ValueError(f"GraphReachability needs n_nodes >= 2*(hops+1) and n_edges >= hops+1, got "
                             f"n_nodes={n_nodes}, hops={hops}, n_edges={n_edges}.")
        half = n_nodes // 2
        room = hops + (half - hops - 1) * (half - hops - 2) // 2 + (n_nodes - half) * (n_nodes - half - 1) // 2
        if n_edges > room:
            raise ValueError(f"GraphReachability with n_nodes={n_nodes}, hops={hops} has room for at most {room} "
                             f"edges, but n_edges={n_edges} was asked; use fewer edges or more nodes.")
        self.vocab, self.n_nodes, self.hops, self.n_edges = TaskVocab(n_nodes), n_nodes, hops, n_edges

    @property
    def n_steps(self) -> int:
        return self.hops + 1

    def config(self) -> dict:
        return {"task": self.name, "n_nodes": self.n_nodes, "hops": self.hops, "n_edges": self.n_edges}

    def _one(self, gen):
        N, H = self.n_nodes, self.hops
        nodes = torch.randperm(N, generator=gen).tolist()
        half = N // 2
        side_a, side_b = nodes[:half], nodes[half:]        # no edge ever goes from side a to side b
        path = side_a[:H + 1]
        edges = {(path[i], path[i + 1]) for i in range(H)}
        rank = {v: i for i, v in enumerate(side_a + side_b)}
        while len(edges) < self.n_edges:
            side = side_a if torch.rand(1, generator=gen).item() < 0.5 else side_b
            u, v = (side[int(i)] for i in torch.randint(0, len(side), (2,), generator=gen))
            if rank[u] < rank[v] and (side is side_b or (u not in path[:-1] and v not in path)):
                edges.add((u, v))                           # forward edges only: a DAG; the path stays unique
        target, distractor = path[-1], side_b[-1]
        edges = sorted(edges)
        order = torch.randperm(len(edges), generator=gen).tolist()
        tokens = [self.vocab.edge(*edges[i]) for i in order]
        cands = [target, distractor] if torch.rand(1, generator=gen).item() < 0.5 else [distractor, target]
        question = tokens + [self.vocab.q, path[0], cands[0], cands[1]]
        return question, path

    def sample(self, n: int, gen: torch.Generator) -> TaskBatch:
        qs, chains = zip(*(self._one(gen) for _ in range(n)))
        chain = torch.tensor(chains)
        return TaskBatch(torch.tensor(qs), chain, chain[:, -1].clone())


def make_task(name: str, **kwargs):
    tasks = {PointerChasing.name: PointerChasing, GraphReachability.name: GraphReachability}
    if name not in tasks:
        raise ValueError(f"Unknown task {name!r}; choose one of {sorted(tasks)}.")
    return tasks[name](**kwargs)
