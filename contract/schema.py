"""The feature schema: the one contract between training, export and serving.

It is written as JSON next to every checkpoint and into the ONNX metadata, so the exporter and the
service know the vocabulary sizes and shapes without importing torch or unpickling anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Likes and views levels are 1..10 with 0 for unknown (the QIN paper), so the vocabulary is 11.
LEVEL_VOCAB = 11
#: The highest likes/views level.
LEVEL_MAX = LEVEL_VOCAB - 1
#: item_info carries exactly five tag ids per item, 0-padded.
TAGS_PER_ITEM = 5
#: item_emb_d128: the frozen multimodal vector of every item.
ITEM_VECTOR_DIM = 128
#: Only the most recent behaviours feed the model.
DEFAULT_HISTORY_LEN = 64


@dataclass(frozen=True)
class FeatureSchema:
    """Vocabulary sizes and shapes of the model's inputs.

    ``item_vocab`` counts item_info rows, padding row 0 included; ``tag_vocab`` is the largest tag
    id plus one. Ids at or beyond a vocabulary are not trained; serving maps them to padding.
    """

    item_vocab: int
    tag_vocab: int
    level_vocab: int = LEVEL_VOCAB
    tags_per_item: int = TAGS_PER_ITEM
    item_vector_dim: int = ITEM_VECTOR_DIM
    history_len: int = DEFAULT_HISTORY_LEN

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(
                    f"schema field {field.name!r} must be a positive int, got {value!r}"
                )

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSchema:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown schema fields: {sorted(unknown)}")
        return cls(**data)


#: The real MicroLens_1M_x1 vocabularies; the paper preset's parameter count uses them.
MICROLENS_1M = FeatureSchema(item_vocab=91_718, tag_vocab=11_740)
