"""What every CTR network here shares: how items and context become tensors, two input forms.

Inputs come in two equivalent forms:

* ``forward`` (the *direct* form): one row per candidate, the row's own history laid out in full.
  It is what the reference ONNX export traces.
* ``forward_unique`` (the *indexed* form): the batch's distinct items once, and indices into them.
  Training uses it because items repeat heavily in a batch: each item is encoded once, then
  gathered, which gives the same numbers for a fraction of the work.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from contract.schema import FeatureSchema
from model.config import ModelConfig
from model.layers import ItemEncoder, init_embedding


class CTRModel(nn.Module):
    """Base class: item encoder, level embeddings, and the two input forms. Returns logits."""

    def __init__(self, config: ModelConfig, schema: FeatureSchema) -> None:
        super().__init__()
        self.config = config
        self.schema = schema
        dim = config.embedding_dim
        self.items = ItemEncoder(
            schema.item_vocab, schema.tag_vocab, dim, schema.item_vector_dim, config.vector_dim
        )
        self.likes_embedding = nn.Embedding(schema.level_vocab, dim, padding_idx=0)
        self.views_embedding = nn.Embedding(schema.level_vocab, dim, padding_idx=0)
        init_embedding(self.likes_embedding)
        init_embedding(self.views_embedding)

    def context(self, likes: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
        """c = [E_likes(likes) | E_views(views)], (B, 2d)."""
        return torch.cat([self.likes_embedding(likes), self.views_embedding(views)], dim=-1)

    def forward(
        self,
        likes: torch.Tensor,
        views: torch.Tensor,
        target_ids: torch.Tensor,
        target_tags: torch.Tensor,
        target_vectors: torch.Tensor,
        history_ids: torch.Tensor,
        history_tags: torch.Tensor,
        history_vectors: torch.Tensor,
    ) -> torch.Tensor:
        """Direct form: shapes (B,) x3, (B,T), (B,128), (B,L), (B,L,T), (B,L,128) -> logits (B,)."""
        target = self.items(target_ids, target_tags, target_vectors)
        history = self.items(history_ids, history_tags, history_vectors)
        return self.score(self.context(likes, views), target, history, history_ids > 0)

    def forward_unique(
        self,
        likes: torch.Tensor,
        views: torch.Tensor,
        item_ids: torch.Tensor,
        item_tags: torch.Tensor,
        item_vectors: torch.Tensor,
        target_index: torch.Tensor,
        history_index: torch.Tensor,
    ) -> torch.Tensor:
        """Indexed form: distinct items (U,), (U,T), (U,128) and indices (B,), (B,L) -> (B,)."""
        encoded = self.items(item_ids, item_tags, item_vectors)
        mask = item_ids[history_index] > 0
        # F.embedding gathers like encoded[index] but its backward is about twice as fast on CPU.
        target = F.embedding(target_index, encoded)
        history = F.embedding(history_index, encoded)
        return self.score(self.context(likes, views), target, history, mask)

    def score(
        self,
        context: torch.Tensor,
        target: torch.Tensor,
        history: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """(B, 2d), (B, n), (B, L, n), (B, L) bool -> logits (B,)."""
        raise NotImplementedError

    def regularised_tables(self) -> list[torch.Tensor]:
        """Parameters under the L2 penalty (the QIN paper): every embedding table and P."""
        return [
            *self.items.regularised_tables(),
            self.likes_embedding.weight,
            self.views_embedding.weight,
        ]
