"""The two exported networks, as torch modules built from a trained model in eval mode.

``DirectGraph`` is the training forward (one row per candidate) plus the unknown-id rules of
:mod:`export.contract`; it is the reference. ``ServingGraph`` computes the same probabilities
grouped by user, with the exact rewrites of :mod:`export.folding`:

* items are encoded once per user history and once per candidate;
* for QIN, the history side of attention (``A s`` and ``W_o W_v s``) is computed once per user;
  a candidate then costs two length-L dot products instead of four n x a projections per
  history item;
* QNN rows and BatchNorm fold into one D x D matrix per layer (MLP blocks into one linear map).

Models without a rewrite here (DIN) still share the per-user item encoding: the serving graph
gathers each candidate's encoded history and calls the model's own ``score``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from export.folding import fold_attention, fold_linear_batchnorm, fold_quadratic
from model.base import CTRModel
from model.layers import MultiLayerPerceptron, QuadraticLayer, QuadraticNetwork
from model.qin import QIN


class IdRules(nn.Module):
    """Maps ids the model has not seen to padding, as export.contract documents."""

    def __init__(self, model: CTRModel) -> None:
        super().__init__()
        self.item_vocab = model.schema.item_vocab
        self.tag_vocab = model.schema.tag_vocab
        self.level_vocab = model.schema.level_vocab
        self.history_len = model.schema.history_len

    @staticmethod
    def _within(ids: torch.Tensor, high: int) -> torch.Tensor:
        return torch.where((ids > 0) & (ids < high), ids, torch.zeros_like(ids))

    def items(self, ids: torch.Tensor) -> torch.Tensor:
        return self._within(ids, self.item_vocab)

    def tags(self, tags: torch.Tensor) -> torch.Tensor:
        return self._within(tags, self.tag_vocab)

    def levels(self, levels: torch.Tensor) -> torch.Tensor:
        return self._within(levels, self.level_vocab)

    def recent(self, tensor: torch.Tensor) -> torch.Tensor:
        """The last ``history_len`` positions of dimension 1 (all of them when fewer)."""
        return tensor[:, -self.history_len :]


class RuledInputs(nn.Module):
    """What both graphs do first: apply the id rules, cut the history, encode the items."""

    def __init__(self, model: CTRModel, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model.eval()
        self.rules = IdRules(model)
        self.dtype = dtype

    def encode(self, ids: torch.Tensor, tags: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        rules = self.rules
        return self.model.items(rules.items(ids), rules.tags(tags), vectors.to(self.dtype))

    def encode_history(
        self, ids: torch.Tensor, tags: torch.Tensor, vectors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoded (.., L, n), mask (.., L) bool): a raw id > 0 is a behaviour, known or not."""
        recent = self.rules.recent
        ids = recent(ids)
        return self.encode(ids, recent(tags), recent(vectors)), ids > 0

    def context(self, likes: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        return self.model.context(self.rules.levels(likes), self.rules.levels(views))


class DirectGraph(RuledInputs):
    """One row per candidate: ``sigmoid(model(...))`` with the id rules. Outputs float32."""

    def forward(
        self,
        likes_level: torch.Tensor,
        views_level: torch.Tensor,
        candidate_ids: torch.Tensor,
        candidate_tags: torch.Tensor,
        candidate_vectors: torch.Tensor,
        history_ids: torch.Tensor,
        history_tags: torch.Tensor,
        history_vectors: torch.Tensor,
    ) -> torch.Tensor:
        history, mask = self.encode_history(history_ids, history_tags, history_vectors)
        target = self.encode(candidate_ids, candidate_tags, candidate_vectors)
        logits = self.model.score(self.context(likes_level, views_level), target, history, mask)
        return torch.sigmoid(logits).float()


class ServingGraph(RuledInputs):
    """Grouped by user: U histories once, C candidates each pointing at its user's row."""

    def __init__(self, model: CTRModel, dtype: torch.dtype = torch.float32) -> None:
        super().__init__(model, dtype)
        self.folded = isinstance(model, QIN)
        if not isinstance(model, QIN):
            return
        self.scoring = model.config.attention
        if model.attention is not None:
            attention = fold_attention(model.attention)
            self.register_buffer("attention_key", attention.key)
            self.register_buffer("attention_value", attention.value)
        self.quadratic = isinstance(model.interaction, QuadraticNetwork)
        self.layer_weights = nn.ParameterList()
        self.layer_biases = nn.ParameterList()
        self.layer_shifts = nn.ParameterList()
        self.layer_slopes = nn.ParameterList()
        self.prelu = False

        def keep(store: nn.ParameterList, tensor: torch.Tensor) -> None:
            store.append(nn.Parameter(tensor, requires_grad=False))

        if isinstance(model.interaction, QuadraticNetwork):
            for layer in model.interaction.layers:
                assert isinstance(layer, QuadraticLayer)
                folded = fold_quadratic(layer)
                keep(self.layer_weights, folded.weight)
                keep(self.layer_biases, folded.bias)
                keep(self.layer_shifts, folded.shift)
                if folded.slope is not None:
                    self.prelu = True
                    keep(self.layer_slopes, folded.slope)
        else:
            assert isinstance(model.interaction, MultiLayerPerceptron)
            modules = list(model.interaction.net)
            for index in range(0, len(modules), 4):
                linear, norm = modules[index], modules[index + 1]
                assert isinstance(linear, nn.Linear) and isinstance(norm, nn.BatchNorm1d)
                weight, bias = fold_linear_batchnorm(linear, norm)
                keep(self.layer_weights, weight)
                keep(self.layer_biases, bias)

    def forward(
        self,
        history_ids: torch.Tensor,
        history_tags: torch.Tensor,
        history_vectors: torch.Tensor,
        candidate_user: torch.Tensor,
        candidate_ids: torch.Tensor,
        candidate_tags: torch.Tensor,
        candidate_vectors: torch.Tensor,
        likes_level: torch.Tensor,
        views_level: torch.Tensor,
    ) -> torch.Tensor:
        model = self.model
        history, behaviour = self.encode_history(history_ids, history_tags, history_vectors)
        target = self.encode(candidate_ids, candidate_tags, candidate_vectors)  # (C, n)
        context = self.context(likes_level, views_level)
        if not self.folded:
            logits = model.score(
                context, target, history[candidate_user], behaviour[candidate_user]
            )
            return torch.sigmoid(logits).float()
        mask = behaviour.to(self.dtype)  # (U, L)
        parts = [context, target]
        if hasattr(self, "attention_key"):
            parts.append(self._attend(target, history, mask, candidate_user))
        z = torch.cat(parts, dim=-1)
        z = self._quadratic(z) if self.quadratic else self._mlp(z)
        head = model.head
        assert isinstance(head, nn.Linear)
        return torch.sigmoid(F.linear(z, head.weight, head.bias).squeeze(-1)).float()

    def _attend(
        self,
        target: torch.Tensor,
        history: torch.Tensor,
        mask: torch.Tensor,
        candidate_user: torch.Tensor,
    ) -> torch.Tensor:
        """ASTA per candidate from per-user keys and values: (C, n)."""
        key, value = self.attention_key, self.attention_value
        assert isinstance(key, torch.Tensor) and isinstance(value, torch.Tensor)
        keys = history @ key.T  # (U, L, n): A s, once per user
        values = history @ value.T  # (U, L, n): W_o W_v s, once per user
        scores = torch.bmm(keys[candidate_user], target.unsqueeze(-1)).squeeze(-1)  # (C, L)
        user_mask = mask[candidate_user]
        if self.scoring == "relu":
            weights = torch.relu(scores * user_mask)
        else:
            scores = scores.masked_fill(user_mask == 0, float("-inf"))
            weights = torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)
        pooled = torch.bmm(weights.unsqueeze(1), values[candidate_user]).squeeze(1)
        return pooled + target

    def _quadratic(self, z: torch.Tensor) -> torch.Tensor:
        for index, weight in enumerate(self.layer_weights):
            q = z * F.linear(z, weight, self.layer_biases[index]) + self.layer_shifts[index]
            if self.prelu:
                activated = torch.where(q >= 0, q, q * self.layer_slopes[index])
            else:
                activated = torch.relu(q)
            z = z + activated
        return z

    def _mlp(self, z: torch.Tensor) -> torch.Tensor:
        for index, weight in enumerate(self.layer_weights):
            z = torch.relu(F.linear(z, weight, self.layer_biases[index]))
        return z


def build_graph(model: CTRModel, graph: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The ``graph`` ("serving" or "direct") of a copy of ``model``, computing in ``dtype``.

    Folding happens in float64 from the float32 weights; only then is the whole graph cast, so
    a float16 graph holds the float16 rounding of the exact folded weights.
    """
    model = copy.deepcopy(model).float().eval()
    built: nn.Module
    if graph == "serving":
        built = ServingGraph(model, dtype)
    elif graph == "direct":
        built = DirectGraph(model, dtype)
    else:
        raise ValueError(f"graph must be serving or direct, got {graph!r}")
    return built.to(dtype).eval()
