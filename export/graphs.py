"""The two exported networks, as torch modules built from a trained model in eval mode.

``DirectGraph`` is the training forward (one row per candidate) plus the unknown-id rules of
:mod:`contract.onnx_io`; it is the reference. ``ServingGraph`` computes the same probabilities
grouped by user, with the exact rewrites of :mod:`export.folding`:

* items are encoded once per user history and once per candidate;
* for QIN, attention folds into two n x n maps, ``t·(A s) = (Aᵀ t)·s`` and
  ``Σ_j w_j W_o W_v s_j = (W_o W_v) Σ_j w_j s_j``, applied on the candidate side (2 n² per
  candidate, whatever the history length or the number of users); what is left per history item
  is two length-n dot products against the user's encoded history, done as plain GEMMs against
  every user's history when the batch has few users and by gathering each candidate's history
  otherwise (see :meth:`ServingGraph._attend`);
* QNN rows and BatchNorm fold into one D x D matrix per layer (MLP blocks into one linear map),
  and PReLU is written as ``relu(q) + slope * min(q, 0)``: the same value bit for bit, and much
  cheaper in onnxruntime than its ``PRelu`` or ``Where`` kernels.

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

#: Batches with at most this many users run attention as GEMMs against all users' histories
#: (C x U·L scores); larger ones gather each candidate's history instead. The GEMMs do U times
#: the multiply-adds of the gather path but at GEMM speed, while the gather copies C x L x n
#: floats and then runs memory-bound batched dot products. Measured on onnxruntime CPU (history
#: 64), the two paths cost the same at about 16 users (small preset) and 24-48 users (paper).
GEMM_ATTENTION_MAX_USERS = 16


class IdRules(nn.Module):
    """Maps ids the model has not seen to padding, as contract.onnx_io documents."""

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
        """ASTA per candidate, (C, n): the n x n maps on the candidate side, history by user.

        ``t·(A s) = (tᵀA)·s`` and ``W_o W_v Σ w s = (W_o W_v)(Σ w s)``: with the maps applied to
        the C candidates (and the pooled sums) rather than the U x L history items, no per-user
        projection is paid when users bring few candidates each (the parity check's one row per
        user). The exported graph picks the pooling path at run time with an ``If`` on U.
        """
        key, value = self.attention_key, self.attention_value
        assert isinstance(key, torch.Tensor) and isinstance(value, torch.Tensor)
        query = target @ key  # (C, n): Aᵀ t as a row
        operands = (query, history, mask, candidate_user)
        few_users = history.shape[0] <= GEMM_ATTENTION_MAX_USERS
        if torch.compiler.is_exporting():
            pooled = torch.cond(few_users, self._pool_by_gemm, self._pool_by_gather, operands)
        else:  # eager PyTorch: a plain branch (torch.cond would compile the graph first)
            pooled = (self._pool_by_gemm if few_users else self._pool_by_gather)(*operands)
        return pooled @ value.T + target

    def _pool_by_gemm(
        self,
        query: torch.Tensor,
        history: torch.Tensor,
        mask: torch.Tensor,
        candidate_user: torch.Tensor,
    ) -> torch.Tensor:
        """``Σ_j w_j s_j`` (C, n) from two GEMMs against every user's history (few users).

        Scores are taken for all U x L history items and each candidate keeps its own user's
        block (a gather: no arithmetic on the other users' scores, so an overflow there cannot
        leak in). Pooling spreads the weights over a zero (C, U·L) matrix; the zeros add exactly.
        """
        users, length, width = history.shape
        candidates = query.shape[0]
        flat = history.reshape(users * length, width)
        scores = (query @ flat.T).reshape(candidates, users, length)
        index = candidate_user.reshape(candidates, 1, 1).expand(candidates, 1, length)
        scores = scores.gather(1, index).reshape(candidates, length)
        weights = self._weights(scores, mask[candidate_user])
        own = candidate_user.unsqueeze(1) == torch.arange(users, device=query.device)
        spread = own.to(weights.dtype).unsqueeze(-1) * weights.unsqueeze(1)  # (C, U, L)
        return spread.reshape(candidates, users * length) @ flat

    def _pool_by_gather(
        self,
        query: torch.Tensor,
        history: torch.Tensor,
        mask: torch.Tensor,
        candidate_user: torch.Tensor,
    ) -> torch.Tensor:
        """``Σ_j w_j s_j`` (C, n) from each candidate's gathered history (many users).

        One (C, L, n) gather serves both products, since both read the raw history.
        """
        own = history[candidate_user]  # (C, L, n)
        scores = torch.bmm(own, query.unsqueeze(-1)).squeeze(-1)  # (C, L)
        weights = self._weights(scores, mask[candidate_user])
        return torch.bmm(weights.unsqueeze(1), own).squeeze(1)

    def _weights(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ASTA's weights (C, L) from raw scores, as the training forward computes them."""
        if self.scoring == "relu":
            return torch.relu(scores * mask)
        scores = scores.masked_fill(mask == 0, float("-inf"))
        # A row with no history has only -inf scores; its weights are 0, not NaN.
        return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)

    def _quadratic(self, z: torch.Tensor) -> torch.Tensor:
        for index, weight in enumerate(self.layer_weights):
            q = z * F.linear(z, weight, self.layer_biases[index]) + self.layer_shifts[index]
            z = z + self.activate(q, index)
        return z

    def activate(self, q: torch.Tensor, index: int) -> torch.Tensor:
        """PReLU or ReLU of one layer. ``relu(q) + slope * min(q, 0)`` is PReLU exactly (one
        term is always a zero), but element-wise ops onnxruntime runs vectorised: its ``PRelu``
        kernel and ``Where`` cost about 0.5 and 1-3 ms per (200, 1024) tensor, these ~0.1 ms.
        """
        if not self.prelu:
            return torch.relu(q)
        return torch.relu(q) + self.layer_slopes[index] * torch.clamp(q, max=0.0)

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
