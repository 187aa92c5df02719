"""DIN, the challenge's official baseline: MLP attention over [t, s, t-s, t*s], then a DNN.

Attention weights are not normalised (no softmax) and padded positions are multiplied by zero,
as the challenge describes its baseline.
"""

from __future__ import annotations

import torch
from torch import nn

from contract.schema import FeatureSchema
from model.base import CTRModel
from model.config import ModelConfig
from model.layers import MultiLayerPerceptron, init_linear


class DINAttention(nn.Module):
    def __init__(self, width: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = 4 * width
        for units in hidden:
            linear = nn.Linear(previous, units)
            init_linear(linear)
            layers += [linear, nn.ReLU()]
            previous = units
        out = nn.Linear(previous, 1)
        init_linear(out)
        self.net = nn.Sequential(*layers, out)

    def forward(
        self, target: torch.Tensor, history: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """target (B, n), history (B, L, n), mask (B, L) -> pooled interest (B, n)."""
        expanded = target.unsqueeze(1).expand_as(history)
        features = torch.cat([expanded, history, expanded - history, expanded * history], dim=-1)
        weights = self.net(features).squeeze(-1) * mask.to(history.dtype)
        return torch.einsum("bl,bln->bn", weights, history)


class DIN(CTRModel):
    def __init__(self, config: ModelConfig, schema: FeatureSchema) -> None:
        super().__init__(config, schema)
        n = config.item_width()
        self.attention = DINAttention(n, config.din_attention_hidden)
        self.dnn = MultiLayerPerceptron(
            2 * config.embedding_dim + 2 * n, config.mlp_hidden, config.dropout
        )
        self.head = nn.Linear(self.dnn.out_width, 1)
        init_linear(self.head)

    def score(
        self,
        context: torch.Tensor,
        target: torch.Tensor,
        history: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        interest = self.attention(target, history, mask)
        z = torch.cat([context, target, interest], dim=-1)
        return self.head(self.dnn(z)).squeeze(-1)
