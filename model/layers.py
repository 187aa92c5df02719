"""Building blocks shared by QIN and DIN: item encoding, ASTA, QNN, MLP.

Every ``forward`` takes and returns plain tensors so that ``torch.onnx.export`` can trace the
networks without dictionaries of Python objects in the way.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from model.config import ActivationKind, AttentionKind

#: As in the QIN paper: embeddings start at N(0, 1e-4) with a zero padding row.
EMBEDDING_INIT_STD = 1e-4


def init_embedding(table: nn.Embedding) -> None:
    nn.init.normal_(table.weight, mean=0.0, std=EMBEDDING_INIT_STD)
    with torch.no_grad():
        table.weight[0].zero_()


def init_linear(layer: nn.Linear) -> None:
    nn.init.xavier_normal_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class ItemEncoder(nn.Module):
    """e(i) = [E_id(i) | masked_mean(E_tag(tags_i)) | P · emb128_i], width 2d + h.

    Shapes are free in front: ids (...), tags (..., T), vectors (..., 128) give (..., 2d + h).
    Tag id 0 is padding and excluded from the mean; an item with no tags gets a zero tag part.
    """

    def __init__(
        self, item_vocab: int, tag_vocab: int, dim: int, vector_in: int, vector_dim: int
    ) -> None:
        super().__init__()
        self.id_embedding = nn.Embedding(item_vocab, dim, padding_idx=0)
        self.tag_embedding = nn.Embedding(tag_vocab, dim, padding_idx=0)
        self.vector_projection = nn.Linear(vector_in, vector_dim, bias=False)
        self.width = 2 * dim + vector_dim
        init_embedding(self.id_embedding)
        init_embedding(self.tag_embedding)
        init_linear(self.vector_projection)

    def forward(self, ids: torch.Tensor, tags: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        tag_mask = (tags > 0).to(vectors.dtype)
        tag_sum = (self.tag_embedding(tags) * tag_mask.unsqueeze(-1)).sum(dim=-2)
        tag_mean = tag_sum / tag_mask.sum(dim=-1, keepdim=True).clamp(min=1.0)
        return torch.cat(
            [self.id_embedding(ids), tag_mean, self.vector_projection(vectors)], dim=-1
        )

    def regularised_tables(self) -> list[torch.Tensor]:
        """The parameters the QIN paper puts under L2: embedding tables and the projection P."""
        return [
            self.id_embedding.weight,
            self.tag_embedding.weight,
            self.vector_projection.weight,
        ]


class AdaptiveSparseTargetAttention(nn.Module):
    """ASTA: single-head target attention with ReLU (sparse, unnormalised) scores.

    ``u = W_o(Σ_j w_j W_v s_j) + t`` with ``w = ReLU(mask · (W_q t)·(W_k s_j) / sqrt(a))``.
    The projections are linear, so the code uses two exact re-associations that avoid projecting
    every history item: ``(W_q t)·(W_k s) = (W_kᵀ W_q t)·s`` and
    ``Σ_j w_j W_v s_j = W_v Σ_j w_j s_j``.
    Per row that is O(L·n + a·n) work instead of O(L·n·a); the parameters are the paper's.
    """

    def __init__(self, width: int, attention_width: int, scoring: AttentionKind = "relu") -> None:
        super().__init__()
        if scoring not in ("relu", "softmax"):
            raise ValueError(f"ASTA scoring must be relu or softmax, got {scoring!r}")
        self.query = nn.Linear(width, attention_width, bias=False)
        self.key = nn.Linear(width, attention_width, bias=False)
        self.value = nn.Linear(width, attention_width, bias=False)
        self.output = nn.Linear(attention_width, width, bias=False)
        self.scale = 1.0 / math.sqrt(attention_width)
        self.scoring = scoring
        for layer in (self.query, self.key, self.value, self.output):
            init_linear(layer)

    def forward(
        self, target: torch.Tensor, history: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """target (B, n), history (B, L, n), mask (B, L) bool -> (B, n)."""
        weights = self.attention_weights(target, history, mask)
        pooled = torch.einsum("bl,bln->bn", weights, history)
        return self.output(self.value(pooled)) + target

    def attention_weights(
        self, target: torch.Tensor, history: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        key_query = self.query(target) @ self.key.weight  # (B, n): W_kᵀ W_q t
        scores = torch.einsum("bln,bn->bl", history, key_query) * self.scale
        if self.scoring == "relu":
            return torch.relu(scores * mask.to(scores.dtype))
        scores = scores.masked_fill(~mask, float("-inf"))
        # A row with no history has only -inf scores; its weights are 0, not NaN.
        return torch.nan_to_num(torch.softmax(scores, dim=-1), nan=0.0)


class QuadraticLayer(nn.Module):
    """One QNN layer: z + Dropout(Act(BN(z ⊙ Σ_r Dropout(W_r z + b_r)))).

    ``linear`` holds the R blocks stacked (D -> R·D); the export folds them into one D×D matrix.
    """

    def __init__(self, width: int, rows: int, dropout: float, activation: ActivationKind) -> None:
        super().__init__()
        self.width = width
        self.rows = rows
        self.linear = nn.Linear(width, rows * width)
        self.norm = nn.BatchNorm1d(width)
        self.activation: nn.Module = (
            nn.PReLU(num_parameters=1, init=0.25) if activation == "prelu" else nn.ReLU()
        )
        self.dropout = nn.Dropout(dropout)
        init_linear(self.linear)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        blocks = self.dropout(self.linear(z)).view(-1, self.rows, self.width)
        quadratic = z * blocks.sum(dim=1)
        return z + self.dropout(self.activation(self.norm(quadratic)))


class QuadraticNetwork(nn.Module):
    def __init__(
        self, width: int, layers: int, rows: int, dropout: float, activation: ActivationKind
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            QuadraticLayer(width, rows, dropout, activation) for _ in range(layers)
        )
        self.out_width = width

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            z = layer(z)
        return z


class MultiLayerPerceptron(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout blocks: DIN's DNN and the 'QNN -> MLP' ablation."""

    def __init__(self, width: int, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        previous = width
        for units in hidden:
            linear = nn.Linear(previous, units)
            init_linear(linear)
            blocks += [linear, nn.BatchNorm1d(units), nn.ReLU(), nn.Dropout(dropout)]
            previous = units
        self.net = nn.Sequential(*blocks)
        self.out_width = previous

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
