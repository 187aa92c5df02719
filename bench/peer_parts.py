"""What the peers of bench.peers share: the service's own parts, set up as the service sets them
up, so that a peer differs from the service only in the serving around them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from service.features import FeatureStore, RequestFeatures
from service.packing import ScoringInput, pack
from service.runtime import ModelRunner
from service.settings import Settings

#: One request's reads: user id, candidate ids, an explicit history or None (the stored one).
Ask = tuple[int, np.ndarray, np.ndarray | None]


def model_runner(settings: Settings) -> ModelRunner:
    """The serving graph on the CPU with the service's thread settings."""
    return ModelRunner(settings.model_path, "cpu", settings.intra_op_threads, settings.ort_spinning)


async def fetch_all(store: FeatureStore, asks: Sequence[Ask]) -> list[RequestFeatures]:
    """Every request of a batch read at once (each is the store's one round trip)."""
    return list(await asyncio.gather(*(store.fetch(*ask) for ask in asks)))


def score(runner: ModelRunner, inputs: Sequence[ScoringInput]) -> list[np.ndarray]:
    """One model call for the batch; each request's scores."""
    packed = pack(inputs, int(runner.schema["history_len"]))
    return packed.split(runner.run(packed.feeds))
