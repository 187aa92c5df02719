"""Synthetic MicroLens_1M_x1-format datasets with planted, known structure.

Why it exists: training, export, serving and the benchmarks all read a dataset folder in the
challenge format (docs/model.md), but the real data is large and not shipped with the project.
This module writes such a folder from a seed, at any size, so that everything can run end to end
offline, and so that model quality is measurable: the labels follow a known process that rewards
exactly what QIN is built for.

The planted process (all numpy, vectorised, deterministic by seed):

* Items fall into topic clusters. An item's 128-d vector is its topic centre plus heavy noise (and
  a faint popularity direction); its 1..5 tags come mostly from a few tags of its topic.
* Items have a latent popularity; likes_level and views_level are noisy 1..10 readings of it (about
  2% unknown = 0), and some items drift up or down by up to two levels over time, so each row
  carries the target's level at that row's time.
* Users have 1..3 weighted interest topics and one long behaviour sequence drawn mostly from them.
  A row is (user, the prefix of that sequence at the row's time, a target item); targets are half
  from the user's interests, half from random topics.
* The click logit adds: a term growing with the NUMBER of same-topic items among the most recent 64
  of the history (ASTA's unnormalised ReLU pooling can count; a softmax average cannot); pairwise
  terms a linear model cannot represent (likes x views, likes x a topic-group sign, the target's
  topic x the topic of each of those 64 behaviours, summed); a 'taste' term, the strongest: for
  each of those behaviours that shares the target's topic, a low-rank bilinear form of its 128-d
  vector and the target's (v_j^T A B^T v_t), summed, so that within a topic the fine-grained
  content of the relevant behaviours decides which targets appeal (a pooled history vector
  times the target's, the product a quadratic layer forms directly and a ReLU MLP can only
  approximate); item popularity; Gaussian noise. The
  intercept is calibrated so that about 30% of rows are clicks. Every history term is a sum over
  the window, blind to order: the model reads its history without positions, so a term
  that depended on which behaviour came last would be noise to every model here.
* Rows are ordered by a global time: train is the earliest, then valid, then test, so every user's
  valid/test rows come later in their sequence than their train rows. Rows are shuffled within a
  split. The test split keeps its labels.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contract.schema import DEFAULT_HISTORY_LEN, ITEM_VECTOR_DIM, TAGS_PER_ITEM
from model.synth_meta import refusal

MAX_TOPICS = 50
MIN_ITEMS = 10
MIN_TAG_VOCAB = 200
TOPIC_TAGS = 6  # tags typical of one topic
TAG_FROM_TOPIC = 0.8  # share of an item's tags drawn from its topic's tags
UNKNOWN_LEVEL_RATE = 0.02
MAX_INTERESTS = 3
EXPLORE_RATE = 0.15  # share of behaviours outside the user's interests
TARGET_FROM_INTEREST = 0.5
TARGET_CLICK_RATE = 0.3
ATTENTION_WINDOW = DEFAULT_HISTORY_LEN  # the model reads only the most recent 64 behaviours

# Click-logit coefficients (see click_logit).
COUNT_WEIGHT = 0.8
LEVEL_PRODUCT_WEIGHT = 2.0
LEVEL_GROUP_WEIGHT = 2.0
TOPIC_PAIR_SCALE = 1.5
#: The topic-pair term sums over the window, divided by its width: a full window of one topic
#: gives HISTORY_PAIR_WEIGHT x that pair's effect.
HISTORY_PAIR_WEIGHT = 1.2
POPULARITY_WEIGHT = 0.4
#: Rank r of the taste matrix A B^T (A, B: 128 x r, N(0, 1/r) entries). At most half of the small
#: preset's 32-wide vector projection, so that a model can represent it.
TASTE_RANK = 8
#: The taste term sums over the window, divided by its width, like the topic-pair term. Over all
#: rows its standard deviation is then about 3.6 (about 0.26 x 14), the largest planted term.
TASTE_WEIGHT = 14.0
NOISE_SCALE = 0.7
#: Brings the drawn item vectors (norm about 16) to about unit norm, like PCA outputs.
VECTOR_SCALE = 1.0 / 16.0

CHUNK_ROWS = 131_072
COMPRESSION = "zstd"
SPLITS = ("train", "valid", "test")
# Appending a name keeps every earlier stream's draws (SeedSequence children are by position).
_STREAMS = ("topics", "items", "world", "users", "rows", "labels", "shuffle", "taste")


@dataclass(frozen=True)
class SynthConfig:
    """Generator arguments: everything the output depends on (written to meta.json)."""

    items: int = 10_000
    users: int = 20_000
    train_rows: int = 200_000
    valid_rows: int = 20_000
    test_rows: int = 20_000
    seed: int = 2025
    history_max: int = 100

    def __post_init__(self) -> None:
        if self.items < MIN_ITEMS:
            raise ValueError(f"items must be at least {MIN_ITEMS}, got {self.items}")
        for name in ("users", "train_rows", "valid_rows", "test_rows", "history_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")

    @property
    def total_rows(self) -> int:
        return self.train_rows + self.valid_rows + self.test_rows


@dataclass(frozen=True)
class Items:
    """Per-item truth, indexed by item id (row 0 is padding: topic -1, all zero)."""

    topic: np.ndarray  # (items+1,) int64
    popularity: np.ndarray  # (items+1,) float64, latent
    likes: np.ndarray  # (items+1,) int64 base level, 0 = unknown
    views: np.ndarray  # (items+1,) int64
    drift: np.ndarray  # (items+1,) int64 in {-1, 0, 1}: level change per half of the time span
    tags: np.ndarray  # (items+1, 5) int64, 0-padded
    vectors: np.ndarray  # (items+1, 128) float32


@dataclass(frozen=True)
class Users:
    """Per-user truth, indexed by user index 0..users-1 (user_id is index + 1)."""

    interests: np.ndarray  # (users, slots) int64 topics
    weights: np.ndarray  # (users, slots) float64, rows sum to 1, unused slots 0
    activity: np.ndarray  # (users,) float64, share of rows
    length: np.ndarray  # (users,) int64 behaviour sequence length
    sequence: np.ndarray  # (users, max length) int64 item ids, oldest first, 0 past length


@dataclass(frozen=True)
class Rows:
    """All rows in global time order (train first, then valid, then test)."""

    user: np.ndarray  # (rows,) int64 user index
    time: np.ndarray  # (rows,) float64 in [0, 1), ascending
    prefix: np.ndarray  # (rows,) int64 behaviours seen before this row
    target: np.ndarray  # (rows,) int64 item id >= 1
    likes: np.ndarray  # (rows,) int64 target's level at this time
    views: np.ndarray  # (rows,) int64


def n_topics(items: int) -> int:
    """Topic count: 50, fewer for tiny catalogues so that every topic keeps about 10 items."""
    return max(2, min(MAX_TOPICS, items // 10))


def tag_vocab(items: int) -> int:
    """Tag vocabulary size including padding tag 0 (as the real data's tag vocabulary counts it)."""
    return max(MIN_TAG_VOCAB, items // 10 + 1)


def topic_group(topic: np.ndarray) -> np.ndarray:
    """+1 for even topics, -1 for odd: the sign of the likes effect (level x topic interaction)."""
    return 1 - 2 * (np.asarray(topic) % 2)


def _streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators per component, so one helper can replay a part on its own."""
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return {
        name: np.random.default_rng(child) for name, child in zip(_STREAMS, children, strict=True)
    }


def item_topics(config: SynthConfig) -> np.ndarray:
    """Topic of every item id (row 0, padding, is -1); lets tests recover the planted signal."""
    rng = _streams(config.seed)["topics"]
    topics = np.arange(config.items, dtype=np.int64) % n_topics(config.items)
    rng.shuffle(topics)  # balanced topics, random ids
    return np.concatenate([[-1], topics])


def make_items(config: SynthConfig) -> Items:
    """Draw every item's topic, popularity, levels, tags and vector."""
    rng = _streams(config.seed)["items"]
    topic = item_topics(config)
    count, k = config.items, n_topics(config.items)
    popularity = np.concatenate([[0.0], rng.standard_normal(count)])
    likes = _base_level(rng, popularity)
    views = _base_level(rng, popularity)
    drift = np.concatenate([[0], rng.choice([-1, 0, 1], size=count, p=[0.1, 0.8, 0.1])])
    tags = _item_tags(rng, topic, k, tag_vocab(count))
    centres = rng.standard_normal((k, ITEM_VECTOR_DIM))
    popular_direction = rng.standard_normal(ITEM_VECTOR_DIM) / np.sqrt(ITEM_VECTOR_DIM)
    vectors = (
        centres[topic[1:]]
        + rng.standard_normal((count, ITEM_VECTOR_DIM))
        + 2.0 * popularity[1:, None] * popular_direction
    )
    # PCA-reduced multimodal vectors are small (about unit norm, not sqrt(128) x 1.4 as drawn):
    # unscaled, ASTA's unnormalised pooling and the quadratic layers see inputs ~100x too large.
    vectors *= VECTOR_SCALE
    vectors = np.concatenate([np.zeros((1, ITEM_VECTOR_DIM)), vectors]).astype(np.float32)
    return Items(topic, popularity, likes, views, drift, tags, vectors)


def _base_level(rng: np.random.Generator, popularity: np.ndarray) -> np.ndarray:
    """A noisy 1..10 reading of popularity, about 2% unknown (0); padding row 0 is 0."""
    noisy = 0.8 * popularity + 0.6 * rng.standard_normal(popularity.shape)
    level = np.clip(np.rint(5.5 + 1.8 * noisy), 1, 10).astype(np.int64)
    level[rng.random(level.shape) < UNKNOWN_LEVEL_RATE] = 0
    level[0] = 0
    return level


def _item_tags(rng: np.random.Generator, topic: np.ndarray, k: int, vocab: int) -> np.ndarray:
    """1..5 distinct tags per item, mostly from its topic's small tag set; 0-padded on the right."""
    count = topic.size - 1
    topic_tags = rng.integers(1, vocab, size=(k, TOPIC_TAGS))
    picks = topic_tags[topic[1:, None], rng.integers(0, TOPIC_TAGS, size=(count, TAGS_PER_ITEM))]
    random_tags = rng.integers(1, vocab, size=(count, TAGS_PER_ITEM))
    tags = np.where(rng.random((count, TAGS_PER_ITEM)) < TAG_FROM_TOPIC, picks, random_tags)
    n_tags = rng.integers(1, TAGS_PER_ITEM + 1, size=count)
    tags[np.arange(TAGS_PER_ITEM) >= n_tags[:, None]] = 0
    tags = np.sort(tags, axis=1)
    tags[:, 1:][tags[:, 1:] == tags[:, :-1]] = 0  # drop repeats
    tags = np.take_along_axis(tags, np.argsort(tags == 0, axis=1, kind="stable"), axis=1)
    return np.concatenate([np.zeros((1, TAGS_PER_ITEM), dtype=np.int64), tags])


class TopicSampler:
    """Draws items of given topics, popular items more often, with one searchsorted per batch."""

    def __init__(self, items: Items) -> None:
        topic = items.topic[1:]
        order = np.argsort(topic, kind="stable")
        self.ids = order + 1
        sorted_topic = topic[order]
        cumulative = np.cumsum(np.exp(0.8 * items.popularity[self.ids]))
        starts = np.searchsorted(sorted_topic, np.arange(sorted_topic[-1] + 1))
        ends = np.append(starts[1:], sorted_topic.size)
        before = np.where(starts > 0, cumulative[starts - 1], 0.0)
        share = (cumulative - before[sorted_topic]) / (cumulative[ends - 1] - before)[sorted_topic]
        share[ends - 1] = 1.0
        self.keys = sorted_topic + share  # topic t's items cover (t, t + 1]

    def draw(self, rng: np.random.Generator, topics: np.ndarray) -> np.ndarray:
        position = np.searchsorted(self.keys, topics + rng.random(topics.shape), side="right")
        return self.ids[np.minimum(position, self.ids.size - 1)]


def make_users(config: SynthConfig, items: Items, sampler: TopicSampler) -> Users:
    """Draw interests and one behaviour sequence per user (long enough for every row's prefix)."""
    rng = _streams(config.seed)["users"]
    count, k, hist = config.users, n_topics(config.items), config.history_max
    slots = min(MAX_INTERESTS, k)
    interests = np.argsort(rng.random((count, k)), axis=1)[:, :slots]
    n_interests = rng.integers(1, slots + 1, size=count)
    weights = rng.gamma(1.0, size=(count, slots)) + 0.1
    weights[np.arange(slots) >= n_interests[:, None]] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    activity = rng.lognormal(0.0, 1.0, size=count)
    length = rng.integers(max(1, hist // 2), 2 * hist + 1, size=count)
    span = int(length.max())
    topics = _pick_interest(rng, interests, weights, (count, span))
    explore = rng.random((count, span)) < EXPLORE_RATE
    topics = np.where(explore, rng.integers(0, k, size=(count, span)), topics)
    sequence = sampler.draw(rng, topics)
    sequence[np.arange(span) >= length[:, None]] = 0
    return Users(interests, weights, activity / activity.sum(), length, sequence)


def _pick_interest(
    rng: np.random.Generator, interests: np.ndarray, weights: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """For each (user, draw), one of the user's interest topics by weight; shape[0] = users."""
    cumulative = np.cumsum(weights, axis=1)
    cumulative[:, -1] = 1.0 + 1e-9  # keep float error from selecting an unused slot
    uniform = rng.random(shape)
    slot = np.zeros(shape, dtype=np.int64)
    for column in range(weights.shape[1] - 1):
        slot += uniform >= cumulative[:, column : column + 1]
    return np.take_along_axis(interests, slot, axis=1)


def make_rows(config: SynthConfig, items: Items, users: Users, sampler: TopicSampler) -> Rows:
    """Draw every row's user, time, history prefix, target and the target's levels at that time."""
    rng = _streams(config.seed)["rows"]
    total = config.total_rows
    user = rng.choice(config.users, size=total, p=users.activity)
    time = rng.random(total)
    order = np.argsort(time, kind="stable")
    user, time = user[order], time[order]
    length = users.length[user]
    prefix = np.minimum(np.floor(time * (length + 1)).astype(np.int64), length)
    picked = _pick_interest(rng, users.interests[user], users.weights[user], (total, 1))[:, 0]
    random_topic = rng.integers(0, n_topics(config.items), size=total)
    topic = np.where(rng.random(total) < TARGET_FROM_INTEREST, picked, random_topic)
    target = sampler.draw(rng, topic)
    likes = _level_at(items.likes, items.drift, target, time)
    views = _level_at(items.views, items.drift, target, time)
    return Rows(user, time, prefix, target, likes, views)


def _level_at(
    base: np.ndarray, drift: np.ndarray, target: np.ndarray, time: np.ndarray
) -> np.ndarray:
    """A target's level at a row's time: drifting items move up to two levels; unknown stays 0."""
    level = np.clip(base[target] + np.rint(2.0 * drift[target] * time).astype(np.int64), 1, 10)
    return np.where(base[target] == 0, 0, level)


def _centred(level: np.ndarray) -> np.ndarray:
    """Level 1..10 to [-1, 1]; unknown (0) to 0."""
    return np.where(level > 0, (level - 5.5) / 4.5, 0.0)


def recent_window(users: Users, user: np.ndarray, prefix: np.ndarray, width: int) -> np.ndarray:
    """Item ids of the most recent `width` behaviours before each row, newest first, 0 = none."""
    position = prefix[:, None] - 1 - np.arange(width)
    ids = users.sequence[user[:, None], np.maximum(position, 0)]
    return np.where(position >= 0, ids, 0)


#: The click logit's planted terms, in the order they are summed (see click_terms).
TERMS = (
    "same_topic_count",
    "likes_x_views",
    "likes_x_topic_group",
    "history_topic_pair",
    "relevant_taste",
    "popularity",
)


def topic_pair_matrix(config: SynthConfig) -> np.ndarray:
    """The (k, k) topic-pair effects: a behaviour's topic x the target's topic."""
    k = n_topics(config.items)
    return TOPIC_PAIR_SCALE * _streams(config.seed)["world"].standard_normal((k, k))


def taste_factors(config: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """The (128, r) factors A and B of the taste matrix: behaviour side and target side."""
    rng = _streams(config.seed)["taste"]
    scale = 1.0 / np.sqrt(TASTE_RANK)
    return (
        scale * rng.standard_normal((ITEM_VECTOR_DIM, TASTE_RANK)),
        rng.standard_normal((ITEM_VECTOR_DIM, TASTE_RANK)),
    )


def relevant_taste(
    config: SynthConfig, items: Items, ids: np.ndarray, relevant: np.ndarray, target: np.ndarray
) -> np.ndarray:
    """Σ_j relevant_j (A^T v_j)·(B^T v_t) / width over the window the model reads: ``ids`` and
    ``relevant`` (same topic as the target) are (rows, width), ``target`` the rows' targets. One
    (rows, r) accumulator per window position keeps memory at O(rows · r)."""
    behaviour, target_side = taste_factors(config)
    projected = items.vectors.astype(np.float64) @ behaviour  # (items + 1, r); padding row 0
    pooled = np.zeros((ids.shape[0], TASTE_RANK))
    for position in range(ids.shape[1]):
        pooled += relevant[:, position, None] * projected[ids[:, position]]
    taste = (pooled * (items.vectors[target].astype(np.float64) @ target_side)).sum(axis=1)
    return taste / ids.shape[1]


def _recent_topics(
    config: SynthConfig, items: Items, users: Users, rows: Rows, index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Topics of the behaviours the model reads before rows ``index`` (newest first, -1 for
    none) and of their targets."""
    window = items.topic[_read_window(config, users, rows, index)]
    return window, items.topic[rows.target[index]]


def _read_window(config: SynthConfig, users: Users, rows: Rows, index: np.ndarray) -> np.ndarray:
    """Item ids of the behaviours the model reads before rows ``index`` (newest first, 0 = none)."""
    width = min(ATTENTION_WINDOW, config.history_max)
    return recent_window(users, rows.user[index], rows.prefix[index], width)


def same_topic_count(world: World, index: np.ndarray) -> np.ndarray:
    """How many of the most recent behaviours the model reads (64) before rows ``index`` share
    the target's topic: what ASTA's unnormalised pooling can count."""
    window, target_topic = _recent_topics(world.config, world.items, world.users, world.rows, index)
    return (window == target_topic[:, None]).sum(axis=1)


def click_terms(
    config: SynthConfig,
    items: Items,
    users: Users,
    rows: Rows,
    topic_pairs: np.ndarray,
    index: np.ndarray,
) -> dict[str, np.ndarray]:
    """Each planted term of the click logit (TERMS) for rows ``index``: their sum is the
    noiseless logit before the intercept. Analyses use them to see which terms a model got."""
    ids = _read_window(config, users, rows, index)
    target = rows.target[index]
    window, target_topic = items.topic[ids], items.topic[target]
    relevant = window == target_topic[:, None]  # padding has topic -1
    same_topic = relevant.sum(axis=1)
    pairs = topic_pairs[np.maximum(window, 0), target_topic[:, None]]
    history_pairs = np.where(window >= 0, pairs, 0.0).sum(axis=1) / window.shape[1]
    likes, views = _centred(rows.likes[index]), _centred(rows.views[index])
    return {
        "same_topic_count": COUNT_WEIGHT * np.log1p(same_topic),
        "likes_x_views": LEVEL_PRODUCT_WEIGHT * likes * views,
        "likes_x_topic_group": LEVEL_GROUP_WEIGHT * topic_group(target_topic) * likes,
        "history_topic_pair": HISTORY_PAIR_WEIGHT * history_pairs,
        "relevant_taste": TASTE_WEIGHT * relevant_taste(config, items, ids, relevant, target),
        "popularity": POPULARITY_WEIGHT * items.popularity[target],
    }


def click_logit(
    config: SynthConfig, items: Items, users: Users, rows: Rows, topic_pairs: np.ndarray
) -> np.ndarray:
    """The noiseless click logit of every row, before the intercept (the Bayes-optimal score)."""
    out = np.empty(rows.user.size)
    for start in range(0, rows.user.size, CHUNK_ROWS):
        index = np.arange(start, min(start + CHUNK_ROWS, rows.user.size))
        terms = click_terms(config, items, users, rows, topic_pairs, index)
        total = terms[TERMS[0]]
        for name in TERMS[1:]:
            total = total + terms[name]
        out[index] = total
    return out


def _intercept(logit: np.ndarray, rate: float) -> float:
    """The intercept whose mean click probability is `rate` (bisection; the mean is monotone)."""
    low, high = -30.0, 30.0
    for _ in range(50):
        middle = (low + high) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(logit + middle)))) < rate:
            low = middle
        else:
            high = middle
    return (low + high) / 2


@dataclass(frozen=True)
class World:
    """Everything drawn: the truth behind a dataset (tests and analyses may inspect it)."""

    config: SynthConfig
    items: Items
    users: Users
    rows: Rows
    score: np.ndarray  # noiseless logit incl. intercept (Bayes-optimal ranking)
    label: np.ndarray  # (rows,) float32


def make_world(config: SynthConfig) -> World:
    """Draw items, users, rows and labels; nothing is written."""
    items = make_items(config)
    sampler = TopicSampler(items)
    users = make_users(config, items, sampler)
    rows = make_rows(config, items, users, sampler)
    score = click_logit(config, items, users, rows, topic_pair_matrix(config))
    rng = _streams(config.seed)["labels"]
    noisy = score + NOISE_SCALE * rng.standard_normal(score.size)
    bias = _intercept(noisy, TARGET_CLICK_RATE)
    probability = 1.0 / (1.0 + np.exp(-(noisy + bias)))
    label = (rng.random(score.size) < probability).astype(np.float32)
    return World(config, items, users, rows, score + bias, label)


ROW_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_seq", pa.list_(pa.int64())),
        ("likes_level", pa.int64()),
        ("views_level", pa.int64()),
        ("item_id", pa.int64()),
        ("label", pa.float32()),
    ]
)
ITEM_SCHEMA = pa.schema(
    [
        ("item_id", pa.int64()),
        ("item_tags", pa.list_(pa.int64())),
        ("item_emb_d128", pa.list_(pa.float32())),
    ]
)


def _fixed_lists(matrix: np.ndarray, value_type: pa.DataType) -> pa.ListArray:
    """A (n, w) matrix as a list column with w values per row."""
    offsets = np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix.ravel(), type=value_type))


def _histories(users: Users, user: np.ndarray, prefix: np.ndarray, limit: int) -> pa.ListArray:
    """Each row's last `limit` behaviours of its user's prefix, oldest first, as a list column."""
    start = np.maximum(prefix - limit, 0)
    lengths = prefix - start
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    column = np.arange(offsets[-1]) + np.repeat(start - offsets[:-1], lengths)
    values = users.sequence[np.repeat(user, lengths), column]
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values, type=pa.int64())
    )


def _row_chunks(world: World, index: np.ndarray) -> Iterator[pa.RecordBatch]:
    """Rows `index` of the world as record batches of at most CHUNK_ROWS rows."""
    rows = world.rows
    for start in range(0, index.size, CHUNK_ROWS):
        part = index[start : start + CHUNK_ROWS]
        user, prefix = rows.user[part], rows.prefix[part]
        columns = [
            pa.array(user + 1, type=pa.int64()),
            _histories(world.users, user, prefix, world.config.history_max),
            pa.array(rows.likes[part], type=pa.int64()),
            pa.array(rows.views[part], type=pa.int64()),
            pa.array(rows.target[part], type=pa.int64()),
            pa.array(world.label[part], type=pa.float32()),
        ]
        yield pa.RecordBatch.from_arrays(columns, schema=ROW_SCHEMA)


def split_bounds(config: SynthConfig) -> dict[str, tuple[int, int]]:
    """Each split's [start, end) in global time order: train earliest, test latest."""
    sizes = (config.train_rows, config.valid_rows, config.test_rows)
    ends = np.cumsum(sizes)
    return {
        name: (int(end - size), int(end))
        for name, size, end in zip(SPLITS, sizes, ends, strict=True)
    }


def split_rows(config: SynthConfig) -> dict[str, np.ndarray]:
    """Each split's rows (indices into the world's time-ordered rows) in the order its file
    holds them: shuffled within the split. Lets an analysis line a file's rows up with the
    world's truth."""
    shuffle = _streams(config.seed)["shuffle"]
    return {
        name: start + shuffle.permutation(end - start)
        for name, (start, end) in split_bounds(config).items()
    }


def write_dataset(world: World, out: Path) -> list[Path]:
    """Write item_info, the three splits and meta.json into `out`; return the written paths."""
    out.mkdir(parents=True, exist_ok=True)
    items = world.items
    item_table = pa.Table.from_arrays(
        [
            pa.array(np.arange(items.topic.size), type=pa.int64()),
            _fixed_lists(items.tags, pa.int64()),
            _fixed_lists(items.vectors, pa.float32()),
        ],
        schema=ITEM_SCHEMA,
    )
    paths = [out / "item_info.parquet"]
    pq.write_table(item_table, paths[0], compression=COMPRESSION)
    for name, index in split_rows(world.config).items():
        paths.append(out / f"{name}.parquet")
        with pq.ParquetWriter(paths[-1], ROW_SCHEMA, compression=COMPRESSION) as writer:
            for batch in _row_chunks(world, index):
                writer.write_batch(batch)
    paths.append(out / "meta.json")
    paths[-1].write_text(json.dumps(asdict(world.config), indent=2, sort_keys=True) + "\n")
    return paths


def generate(config: SynthConfig, out: Path) -> World:
    """Draw a dataset and write it to `out`; returns the drawn truth."""
    world = make_world(config)
    write_dataset(world, out)
    return world


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= minimum, with a message naming the bound."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    defaults = SynthConfig()
    parser = argparse.ArgumentParser(
        prog="python -m model.synth",
        description=(
            "Write a synthetic dataset folder in the MicroLens_1M_x1 format (item_info.parquet, "
            "train/valid/test.parquet, meta.json) whose labels follow a planted process that "
            "rewards target attention over the behaviour history and quadratic feature "
            "interactions. The same arguments always give the same bytes."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder to write (created); one with files in it only if model.synth wrote them "
        "(its meta.json says so) or with --overwrite",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write into OUT even if it holds files model.synth did not write (files of the same "
        "names are replaced, others left)",
    )
    positive = _int_at_least(1)
    parser.add_argument(
        "--items", type=_int_at_least(MIN_ITEMS), default=defaults.items, help="catalogue size"
    )
    parser.add_argument("--users", type=positive, default=defaults.users, help="user count")
    parser.add_argument(
        "--train-rows", type=positive, default=defaults.train_rows, help="earliest rows"
    )
    parser.add_argument(
        "--valid-rows", type=positive, default=defaults.valid_rows, help="rows after train"
    )
    parser.add_argument(
        "--test-rows", type=positive, default=defaults.test_rows, help="latest rows (labelled)"
    )
    parser.add_argument(
        "--seed", type=_int_at_least(0), default=defaults.seed, help="same seed, same bytes"
    )
    parser.add_argument(
        "--history-max",
        type=positive,
        default=defaults.history_max,
        help="longest item_seq stored per row (the model reads the last 64)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        build_parser().error(f"--out {args.out} exists and is not a folder")
    reason = refusal(args.out)
    if reason is not None and not args.overwrite:
        print(f"error: {reason} (--overwrite writes into it anyway)", file=sys.stderr)
        return 2
    config = SynthConfig(
        items=args.items,
        users=args.users,
        train_rows=args.train_rows,
        valid_rows=args.valid_rows,
        test_rows=args.test_rows,
        seed=args.seed,
        history_max=args.history_max,
    )
    world = generate(config, args.out)
    print(
        f"wrote {args.out}: {config.items} items, {config.total_rows} rows, "
        f"click rate {world.label.mean():.3f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
