"""Bounded in-process cache of item features for one feature version.

Items only change with the version, so a warm service reads none of them from Redis: the reader
keeps one cache per live version and drops it whole when the version changes (no per-item
invalidation is ever needed).

Why arrays and not a dict: a request touches about 264 items (64 history + 200 candidates), and
looking them up must not cost a Python loop. An int32 table maps item id to slot (4 bytes per id
of the vocabulary: 0.4 MB for MicroLens); features live in model-ready columns (about 580 bytes
per cached item), so a warm request is one table lookup and five row gathers. When full, CLOCK
eviction (one "recently used" bit per slot, a hand that clears bits as it passes) picks victims in
one vectorised sweep; with ``ITEM_CACHE_SIZE`` at or above the catalogue it never runs.
"""

from __future__ import annotations

import numpy as np

from .layout import ItemFeatures

#: Storage grows geometrically from this many slots up to the capacity.
_INITIAL_SLOTS = 1024


class ItemCache:
    """Features of items ``1..vocab-1``, at most ``capacity`` of them."""

    def __init__(self, capacity: int, vocab: int) -> None:
        if capacity < 0 or vocab < 1:
            raise ValueError(f"need capacity >= 0 and vocab >= 1, got {capacity}, {vocab}")
        self.capacity = capacity
        self.vocab = vocab
        self._slot_of = np.full(vocab, -1, dtype=np.int32)
        self._keys = np.zeros(0, dtype=np.int64)  # the item id cached in each slot
        self._columns = ItemFeatures.zeros(0)  # ids there are 0 for items absent from Redis
        self._used = np.zeros(0, dtype=bool)
        self._size = 0
        self._hand = 0

    def __len__(self) -> int:
        return self._size

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """Slots of ``ids`` (all in ``1..vocab-1``), -1 where absent; marks hits as used."""
        slots = self._slot_of[ids]
        self._used[slots[slots >= 0]] = True
        return slots

    def gather(self, slots: np.ndarray) -> ItemFeatures:
        """Features at ``slots`` (all valid), as new arrays."""
        return self._columns.take(slots)

    def insert(self, keys: np.ndarray, features: ItemFeatures) -> None:
        """Add items ``keys`` (distinct) with their features, evicting if full.

        Keys already present (a concurrent request inserted them first) are skipped.
        """
        absent = self._slot_of[keys] < 0
        if not absent.all():
            keys, features = keys[absent], features.take(absent)
        if self.capacity == 0 or len(keys) == 0:
            return
        if len(keys) > self.capacity:
            keep = np.arange(len(keys) - self.capacity, len(keys))
            keys, features = keys[keep], features.take(keep)
        population = self._size
        free = min(len(keys), self.capacity - population)
        self._grow(population + free)
        slots = np.arange(population, population + free, dtype=np.int64)
        if free < len(keys):  # victims come from the entries present before this call
            slots = np.concatenate([slots, self._evict(len(keys) - free, population)])
        self._size += free
        self._columns.put(slots, features)
        self._keys[slots] = keys
        self._used[slots] = True
        self._slot_of[keys] = slots

    def _grow(self, needed: int) -> None:
        allocated = len(self._keys)
        if needed <= allocated:
            return
        size = min(self.capacity, max(needed, 2 * allocated, _INITIAL_SLOTS))
        grown = ItemFeatures.zeros(size)
        grown.put(np.arange(allocated), self._columns)
        self._columns = grown
        self._keys = np.resize(self._keys, size)
        self._used = np.resize(self._used, size)

    def _evict(self, count: int, size: int) -> np.ndarray:
        """``count`` victims among slots ``0..size-1``, by CLOCK: unused first from the hand."""
        self._hand %= size
        order = (np.arange(size) + self._hand) % size
        unused = order[~self._used[order]]
        if len(unused) >= count:
            victims = unused[:count]
            swept = (int(victims[-1]) - self._hand) % size  # its position in ``order``
            self._used[order[: swept + 1]] = False
        else:
            used = order[self._used[order]]
            victims = np.concatenate([unused, used[: count - len(unused)]])
            self._used[:size] = False
        self._hand = int(victims[-1] + 1) % size
        self._slot_of[self._keys[victims]] = -1
        return victims
