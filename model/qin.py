"""QIN: Adaptive Sparse Target Attention over the history, a Quadratic Neural Network on top.

``z = [c | t | ASTA(t, S, mask)]``, ``p = sigmoid(w · QNN(z) + b)`` (the QIN paper). The paper's
ablations are settings of :class:`~model.config.ModelConfig`: softmax scores, no ASTA, an MLP
instead of the QNN, ReLU instead of PReLU.
"""

from __future__ import annotations

import torch
from torch import nn

from contract.schema import FeatureSchema
from model.base import CTRModel
from model.config import ModelConfig
from model.layers import (
    AdaptiveSparseTargetAttention,
    MultiLayerPerceptron,
    QuadraticNetwork,
    init_linear,
)


class QIN(CTRModel):
    def __init__(self, config: ModelConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        n = config.item_width()
        self.attention: AdaptiveSparseTargetAttention | None = None
        if config.attention != "none":
            self.attention = AdaptiveSparseTargetAttention(n, 2 * n, config.attention)
        width = 2 * config.embedding_dim + n + (n if self.attention is not None else 0)
        self.interaction: QuadraticNetwork | MultiLayerPerceptron
        if config.interaction == "qnn":
            self.interaction = QuadraticNetwork(
                width, config.qnn_layers, config.qnn_rows, config.dropout, config.activation
            )
        else:
            self.interaction = MultiLayerPerceptron(width, config.mlp_hidden, config.dropout)
        self.head = nn.Linear(self.interaction.out_width, 1)
        init_linear(self.head)

    def score(
        self,
        context: torch.Tensor,
        target: torch.Tensor,
        history: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        parts = [context, target]
        if self.attention is not None:
            parts.append(self.attention(target, history, mask))
        return self.head(self.interaction(torch.cat(parts, dim=-1))).squeeze(-1)
