"""The HTTP contract of ``POST /score`` (README, "API"), as pydantic models.

Strict on purpose: ids are JSON integers (``"7"`` or ``7.5`` is a 422, not silently coerced), lists
align with ``item_ids``, unknown fields are refused (a misspelt ``item_id`` is a 422, not a request
for nothing). The size limits depend on the settings and are checked by the route, with the same
422 format.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from contract.schema import LEVEL_MAX
from service.features import HistorySource

INT64_MAX = 2**63 - 1

UserId = Annotated[int, Field(strict=True, ge=0, le=INT64_MAX)]
ItemId = Annotated[int, Field(strict=True, ge=1, le=INT64_MAX)]
HistoryId = Annotated[int, Field(strict=True, ge=0, le=INT64_MAX)]
Level = Annotated[int, Field(strict=True, ge=0, le=LEVEL_MAX)]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"user_id": 42, "item_ids": [7, 19, 23]},
                {
                    "user_id": 42,
                    "item_ids": [7, 19],
                    "likes_level": [3, 0],
                    "views_level": [5, 1],
                    "history": [101, 102, 103],
                },
            ]
        },
    )

    user_id: UserId = Field(description="The user; its stored history is read from Redis.")
    item_ids: list[ItemId] = Field(
        min_length=1,
        description=(
            "Candidates to score, at most MAX_CANDIDATES. An id absent from the feature store or "
            "beyond the trained vocabulary is scored as an unseen item (padding id and features)."
        ),
    )
    likes_level: list[Level] | None = Field(
        default=None, description="Per candidate, 0..10 (0 = unknown): overrides the stored level."
    )
    views_level: list[Level] | None = Field(
        default=None, description="Per candidate, 0..10 (0 = unknown): overrides the stored level."
    )
    history: list[HistoryId] | None = Field(
        default=None,
        description=(
            "Explicit history, oldest first, replacing the stored one (0 = padding, dropped; only "
            "the last HISTORY_LEN are read; at most MAX_HISTORY ids)."
        ),
    )

    @model_validator(mode="after")
    def _levels_align(self) -> ScoreRequest:
        for name in ("likes_level", "views_level"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.item_ids):
                raise ValueError(
                    f"{name} has {len(values)} values for {len(self.item_ids)} item_ids: "
                    "give one per candidate or leave it out"
                )
        return self


class ScoreResponse(BaseModel):
    scores: list[float] = Field(description="Click probabilities, in the order of item_ids.")
    model_version: str
    feature_version: str = Field(description="The live feature-store version that was read.")
    history_source: HistorySource = Field(
        description=(
            "Where the history came from; unknown_user means it was empty; unavailable: Redis "
            "was unreachable and DEGRADED_MODE scored with an empty history."
        )
    )
    history_length: int = Field(description="Behaviours the model read (at most HISTORY_LEN).")
    degraded: bool = Field(
        description="True when scored without Redis (DEGRADED_MODE): treat with care."
    )


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_path: str | None = Field(
        default=None, description="The file to load; default: MODEL_PATH, read again."
    )


class ReloadResponse(BaseModel):
    model_version: str
    previous_version: str
    provider: str
    model_path: str


class ErrorResponse(BaseModel):
    detail: str
    error: str = Field(description="A stable code: queue_full, deadline_exceeded, ...")
