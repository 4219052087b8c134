"""What a per-input policy may decide beyond per-layer fractions, and what it may observe.

Levers (`env.levers`):
- `budget`: one more action a_b per input: its total sparsity is target + budget_radius * a_b
  (clipped to [0, 0.95]). Training holds the token-weighted mean on target, as `eval` measures
  it, with a price on sparsity: the reward gains price * w * (sparsity - target), w the input's
  tokens over the mean of all training inputs' (a short MMLU question's sparsity weighs less than
  a full window's), and the price follows the batch's token-weighted shortfall,
  price += price_lr * (target - mean sparsity) (dual ascent). `eval` projects the batch's
  budgets onto the target exactly instead (`pruning.budgets.project_budgets`).
- `blend`: n_layers more actions: layer l ranks this input's neurons by
  (1 - b_l) * rank in its context ordering + b_l * rank in the global order, b_l = (a + 1) / 2
  (0: context neurons, 1: the global order). Needs context neurons.
- `stats`: the observation gains the dense model's per-layer statistics of the input's context,
  read off the context ordering that context neurons compute anyway: per layer, the share of the
  context's top k neurons that are also in the global top k, at k = 10, 30, 50% of the width,
  and a flag for "no context" (then the shares are 0).
Every decision reads only the item's context (earlier windows, the prompt), never its targets.
With a reference profile (`env.reference`) the layer actions are deviations around it at the
input's own budget (all actions 0: the reference at the target; `env.radius` 0: no layer actions,
every input gets the reference's shape and the policy decides only its levers). Quality is paid
against the reference at the input's target (scored once per (item, target), so zero actions
score exactly 0 and the critic learns only what an action changes), else against the dense model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from pruning.allocation import ranks_of
from pruning.prunable_llm import PrunableLLM
from rl.env import PruningBandit
from scoring.tasks import item_tokens

FEATURE_FRACTIONS = (0.1, 0.3, 0.5)
MAX_BUDGET = 0.95


def global_ordering(model: PrunableLLM) -> torch.Tensor:
    """[n_layers, d_ff] original neuron ids in global importance order."""
    perm = model.permutation
    if perm is not None:
        return perm
    return torch.arange(model.intermediate_size).expand(model.n_layers, -1).clone()


def blend_orderings(
    context: torch.Tensor | None, global_ranks: torch.Tensor, beta: np.ndarray
) -> torch.Tensor | None:
    """Ordering [L, d] (original ids) by (1 - beta_l) * context rank + beta_l * global rank
    (`global_ranks` [L, d]: `ranks_of` the global order, computed once by the caller); None (the
    global order) when there is no context. beta [L] in [0, 1]."""
    if context is None:
        return None
    b = torch.as_tensor(np.asarray(beta, dtype=np.float32))[:, None]  # [L, 1]
    score = (1 - b) * ranks_of(context).float() + b * global_ranks.float()
    return torch.argsort(score, dim=-1, stable=True).to(context.dtype)


def context_features(
    ordering: torch.Tensor | None, global_ranks: torch.Tensor, fractions: Sequence[float]
) -> np.ndarray:
    """[len(fractions) * L + 1]: per k, per layer, |context top k ∩ global top k| / k (global
    top k: `global_ranks` [L, d] below k); last: 1 if there is no context (all shares 0)."""
    n_layers, width = global_ranks.shape
    if ordering is None:
        return np.concatenate([np.zeros(len(fractions) * n_layers), [1.0]]).astype(np.float32)
    shares = []
    for fraction in fractions:
        k = max(1, round(fraction * width))
        top = ordering[:, :k].long()  # [L, k]
        shares.append((torch.gather(global_ranks, 1, top) < k).float().mean(dim=1).numpy())
    return np.concatenate([*shares, [0.0]]).astype(np.float32)


def item_features(
    orderings: Sequence[Sequence[torch.Tensor | None]], global_order: torch.Tensor
) -> np.ndarray:
    """[n_items, dim]: each item's features from the first of its requests that has a context
    (a training window or an eval window: its earlier windows; a question: its prompt)."""
    firsts = [next((o for o in item if o is not None), None) for item in orderings]
    ranks = ranks_of(global_order)
    return np.stack([context_features(o, ranks, FEATURE_FRACTIONS) for o in firsts])


def split_actions(
    actions: np.ndarray, n_layers: int, levers: Sequence[str], layers: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """actions [n, (L) (+ L blend) (+ 1 budget)] -> (layer actions [n, L], blend b [n, L] in
    [0, 1], budget actions [n]); None for a lever that is off; `layers` False (`env.radius` 0):
    no layer actions, all zero (the reference)."""
    actions = np.asarray(actions, dtype=np.float64)
    if layers:
        layer, rest = actions[:, :n_layers], actions[:, n_layers:]
    else:
        layer, rest = np.zeros((len(actions), n_layers)), actions
    blend = None
    if "blend" in levers:
        blend, rest = (np.clip(rest[:, :n_layers], -1, 1) + 1) / 2, rest[:, n_layers:]
    budget = np.clip(rest[:, 0], -1, 1) if "budget" in levers else None
    return layer, blend, budget


def action_dim(n_layers: int, levers: Sequence[str], layers: bool = True) -> int:
    return n_layers * (layers + ("blend" in levers)) + ("budget" in levers)


class LeverBandit(PruningBandit):
    """`PruningBandit` with the levers above, paid against `PruningBandit.score`'s baseline."""

    def __init__(
        self,
        *args: Any,
        levers: Sequence[str] = (),
        budget_radius: float = 0.1,
        price: float = 2.0,
        price_lr: float = 0.05,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if "blend" in levers and self.criterion is None:
            raise ValueError("the blend lever needs context neurons: set env.neurons=context")
        self.levers, self.budget_radius = tuple(levers), budget_radius
        self.price, self.price_lr = price, price_lr
        global_order = global_ordering(self.model)
        self.global_ranks = ranks_of(global_order)  # for blend, once
        self.token_weight = np.ones(self.n_items)
        if "budget" in self.levers:
            tokens = np.array([item_tokens(self.task, i) for i in range(self.n_items)], float)
            self.token_weight = tokens / tokens.mean()
        if "stats" in self.levers:
            found = self.orderings(range(self.n_items)) if self.criterion else None
            if found is None:
                raise ValueError("the stats lever reads context orderings: set env.neurons=context")
            features = item_features(found, global_order)
            self.embeddings = np.concatenate([self.embeddings, features], axis=1, dtype=np.float32)

    @property
    def action_space(self) -> spaces.Box:
        return spaces.Box(
            -1.0,
            1.0,
            (action_dim(self.action_map.n_layers, self.levers, self.action_map.layer_actions),),
            np.float32,
        )

    def budgets(self, targets: np.ndarray, budget: np.ndarray | None) -> np.ndarray:
        if budget is None:
            return np.asarray(targets, dtype=np.float64)
        return np.clip(targets + self.budget_radius * budget, 0.0, MAX_BUDGET)

    def step(
        self, indices: np.ndarray, targets: np.ndarray, actions: np.ndarray
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        layer, blend, budget = split_actions(
            actions, self.action_map.n_layers, self.levers, self.action_map.layer_actions
        )
        budgets = self.budgets(targets, budget)
        kept = self.action_map.kept(layer, budgets)  # [n, L]
        orderings = self.orderings(indices)
        if blend is not None and orderings is not None:
            orderings = [
                [blend_orderings(o, self.global_ranks, blend[k]) for o in item]
                for k, item in enumerate(orderings)
            ]
        rewards, infos = self.pay(indices, targets, kept, orderings)
        sparsity = np.array([info["sparsity"] for info in infos])  # [n], as `pay` measured it
        weight = self.token_weight[np.asarray(indices)]
        rewards = (rewards + self.price * weight * (sparsity - targets)).astype(np.float32)
        for info in infos:
            info["price"] = self.price
        if budget is not None:  # dual ascent: a batch below target raises the price
            shortfall = np.asarray(targets, dtype=np.float64) - sparsity
            self.price += self.price_lr * float(np.dot(weight, shortfall) / weight.sum())
        return rewards, infos
