"""Redis feature store: versioned bulk loads, online history appends, one-round-trip reads.

* ``layout``: key names and binary record formats (the contract with Redis; read it first).
* ``source``: dataset folder -> feature set (the level and latest-history rules).
* ``loader``: versioned bulk load with one atomic switch (synchronous, a command-line tool).
* ``client``: the synchronous Redis client of the command-line tools.
* ``store``: the async reader and appender the service uses (redis.asyncio, one pool).
* ``cache``: the bounded per-version item cache.
* ``errors``: typed failures for the service to map to HTTP statuses.

Nothing here imports torch: the service image has none. ``source`` and ``loader`` need pyarrow and
tqdm (the ``load`` extra); the service and this package's own imports never load them.
"""

from .errors import (
    CorruptRecord,
    FeatureStoreError,
    LoadError,
    NoLiveVersion,
    StoreTimeout,
    StoreUnavailable,
)
from .layout import ItemFeatures
from .store import AppendResult, FeatureStore, HistorySource, RequestFeatures, StoreStats

__all__ = [
    "AppendResult",
    "CorruptRecord",
    "FeatureStore",
    "FeatureStoreError",
    "HistorySource",
    "ItemFeatures",
    "LoadError",
    "NoLiveVersion",
    "RequestFeatures",
    "StoreStats",
    "StoreTimeout",
    "StoreUnavailable",
]
