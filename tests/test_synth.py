"""Tests of the synthetic MicroLens-format generator: format, ranges, determinism, signal."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from model import synth, synth_meta
from model.metrics import roc_auc

TINY = synth.SynthConfig(
    items=300, users=150, train_rows=6000, valid_rows=800, test_rows=700, seed=7, history_max=80
)
FILES = ("item_info.parquet", "train.parquet", "valid.parquet", "test.parquet", "meta.json")
ROW_TYPES = {
    "user_id": pa.int64(),
    "item_seq": pa.list_(pa.int64()),
    "likes_level": pa.int64(),
    "views_level": pa.int64(),
    "item_id": pa.int64(),
    "label": pa.float32(),
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"  # does not exist yet: must be created
    assert synth.main(_argv(TINY, out)) == 0
    return out


@pytest.fixture(scope="module")
def splits(tiny_dir: Path) -> dict[str, pa.Table]:
    return {name: pq.read_table(tiny_dir / f"{name}.parquet") for name in synth.SPLITS}


def _argv(config: synth.SynthConfig, out: Path) -> list[str]:
    return [
        "--out", str(out),
        "--items", str(config.items),
        "--users", str(config.users),
        "--train-rows", str(config.train_rows),
        "--valid-rows", str(config.valid_rows),
        "--test-rows", str(config.test_rows),
        "--seed", str(config.seed),
        "--history-max", str(config.history_max),
    ]  # fmt: skip


def test_writes_exactly_the_expected_files(tiny_dir: Path) -> None:
    assert sorted(p.name for p in tiny_dir.iterdir()) == sorted(FILES)


def test_meta_holds_the_arguments(tiny_dir: Path) -> None:
    meta = json.loads((tiny_dir / "meta.json").read_text())
    assert meta == {
        "items": 300,
        "users": 150,
        "train_rows": 6000,
        "valid_rows": 800,
        "test_rows": 700,
        "seed": 7,
        "history_max": 80,
    }


def test_item_info_schema_and_padding(tiny_dir: Path) -> None:
    table = pq.read_table(tiny_dir / "item_info.parquet")
    assert table.schema.names == ["item_id", "item_tags", "item_emb_d128"]
    assert table.schema.field("item_id").type == pa.int64()
    assert table.schema.field("item_tags").type == pa.list_(pa.int64())
    assert table.schema.field("item_emb_d128").type == pa.list_(pa.float32())
    assert table.num_rows == TINY.items + 1
    ids = table["item_id"].to_numpy()
    np.testing.assert_array_equal(ids, np.arange(TINY.items + 1))
    tags = np.stack(table["item_tags"].to_numpy(zero_copy_only=False))
    vectors = np.stack(table["item_emb_d128"].to_numpy(zero_copy_only=False))
    assert tags.shape == (TINY.items + 1, 5)
    assert vectors.shape == (TINY.items + 1, 128) and vectors.dtype == np.float32
    assert not tags[0].any() and not vectors[0].any()
    assert np.isfinite(vectors).all() and (np.abs(vectors[1:]).sum(axis=1) > 0).all()


def test_item_tags_are_valid(tiny_dir: Path) -> None:
    table = pq.read_table(tiny_dir / "item_info.parquet")
    tags = np.stack(table["item_tags"].to_numpy(zero_copy_only=False))[1:]
    assert tags.min() >= 0 and tags.max() < synth.tag_vocab(TINY.items)
    count = (tags > 0).sum(axis=1)
    assert count.min() >= 1 and count.max() <= 5
    # Left-aligned: padding only after the real tags; and no tag repeated within an item.
    np.testing.assert_array_equal(tags > 0, np.arange(5) < count[:, None])
    for row in tags[:50]:
        real = row[row > 0]
        assert len(set(real.tolist())) == real.size


def test_item_vectors_cluster_by_topic(tiny_dir: Path) -> None:
    table = pq.read_table(tiny_dir / "item_info.parquet")
    vectors = np.stack(table["item_emb_d128"].to_numpy(zero_copy_only=False))[1:]
    topics = synth.item_topics(TINY)[1:]
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = normed @ normed.T
    same = topics[:, None] == topics[None, :]
    np.fill_diagonal(same, False)
    other = topics[:, None] != topics[None, :]
    assert similarity[same].mean() > similarity[other].mean() + 0.2


@pytest.mark.parametrize("name", synth.SPLITS)
def test_split_schema_and_ranges(splits: dict[str, pa.Table], name: str) -> None:
    table = splits[name]
    assert {field.name: field.type for field in table.schema} == ROW_TYPES
    assert table.schema.names == list(ROW_TYPES)
    assert table.num_rows == {"train": 6000, "valid": 800, "test": 700}[name]
    users = table["user_id"].to_numpy()
    assert users.min() >= 1 and users.max() <= TINY.users
    targets = table["item_id"].to_numpy()
    assert targets.min() >= 1 and targets.max() <= TINY.items
    for column in ("likes_level", "views_level"):
        levels = table[column].to_numpy()
        assert levels.min() >= 0 and levels.max() <= 10
        assert 0 < (levels == 0).mean() < 0.1  # unknown exists but is rare
    labels = table["label"].to_numpy()
    assert set(np.unique(labels).tolist()) <= {0.0, 1.0}
    assert 0.15 < labels.mean() < 0.45
    history = table["item_seq"]
    lengths = pc.list_value_length(history).to_numpy()
    assert lengths.min() >= 0 and lengths.max() <= TINY.history_max
    flat = pc.list_flatten(history).to_numpy()
    assert flat.min() >= 1 and flat.max() <= TINY.items  # no padding stored


def test_valid_and_test_come_later_than_train(splits: dict[str, pa.Table]) -> None:
    """A user's history only grows, so a later split's rows never have shorter histories."""
    train_len = _max_history_by_user(splits["train"])
    for name in ("valid", "test"):
        table = splits[name]
        lengths = pc.list_value_length(table["item_seq"]).to_numpy()
        users = table["user_id"].to_numpy()
        shared = np.isin(users, list(train_len))
        earlier = np.array([train_len[u] for u in users[shared]])
        assert shared.any() and (lengths[shared] >= np.minimum(earlier, TINY.history_max)).all()


def _max_history_by_user(table: pa.Table) -> dict[int, int]:
    users = table["user_id"].to_numpy()
    lengths = pc.list_value_length(table["item_seq"]).to_numpy()
    best = np.zeros(TINY.users + 1, dtype=np.int64)
    np.maximum.at(best, users, lengths)
    return {int(u): int(best[u]) for u in np.unique(users)}


def test_rows_of_a_user_share_one_growing_sequence(splits: dict[str, pa.Table]) -> None:
    """Untruncated histories of one user are prefixes of one another (one growing sequence)."""
    table = pa.concat_tables(splits.values())
    users = table["user_id"].to_numpy()
    histories = table["item_seq"].to_pylist()
    checked = 0
    for user in np.unique(users)[:20]:
        rows = [h for u, h in zip(users, histories, strict=True) if u == user]
        prefixes = sorted((h for h in rows if len(h) < TINY.history_max), key=len)
        for shorter, longer in itertools.pairwise(prefixes):
            assert longer[: len(shorter)] == shorter
            checked += 1
    assert checked > 50


def test_same_seed_same_bytes_other_seed_differs(tiny_dir: Path, tmp_path: Path) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    assert synth.main(_argv(TINY, again)) == 0
    assert synth.main(_argv(synth.SynthConfig(**{**_fields(TINY), "seed": 8}), other)) == 0
    for name in FILES:
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    for name in FILES:
        assert (other / name).read_bytes() != (tiny_dir / name).read_bytes(), name


def _fields(config: synth.SynthConfig) -> dict[str, int]:
    return {key: getattr(config, key) for key in synth.SynthConfig.__dataclass_fields__}


def _same_topic_count(table: pa.Table) -> np.ndarray:
    """Per row, how many of the last 64 history items share the target's topic."""
    topics = synth.item_topics(TINY)
    target_topic = topics[table["item_id"].to_numpy()]
    history = table["item_seq"].to_pylist()
    return np.array(
        [
            int((topics[np.asarray(h[-64:], dtype=np.int64)] == t).sum())
            for h, t in zip(history, target_topic, strict=True)
        ]
    )


def test_click_rate_rises_with_same_topic_history_count(splits: dict[str, pa.Table]) -> None:
    table = splits["train"]
    count = _same_topic_count(table)
    labels = table["label"].to_numpy()
    none = labels[count == 0].mean()
    few = labels[(count >= 1) & (count < 8)].mean()
    many = labels[count >= 8].mean()
    assert none + 0.05 < few < many - 0.05
    assert roc_auc(labels, count) > 0.6


def test_click_depends_on_level_interactions(splits: dict[str, pa.Table]) -> None:
    """The likes effect flips sign with the target's topic group: invisible to a linear model."""
    table = splits["train"]
    labels = table["label"].to_numpy()
    likes = table["likes_level"].to_numpy()
    group = synth.topic_group(synth.item_topics(TINY)[table["item_id"].to_numpy()])
    high, low = likes >= 7, (likes >= 1) & (likes <= 4)
    for sign in (1, -1):
        in_group = group == sign
        effect = labels[in_group & high].mean() - labels[in_group & low].mean()
        assert sign * effect > 0.02, (sign, effect)


def test_world_score_is_informative_but_not_separable() -> None:
    world = synth.make_world(TINY)
    auc = roc_auc(world.label, world.score)
    assert 0.75 < auc < 0.95
    assert 0.25 < world.label.mean() < 0.35


def test_split_rows_and_planted_terms_line_up_with_the_written_files(
    tiny_dir: Path, splits: dict[str, pa.Table]
) -> None:
    """Analyses hold a model's scores of a file's rows against the world's truth: the row order
    and the terms must be exactly what the generator wrote and summed."""
    world = synth.make_world(TINY)
    order = synth.split_rows(TINY)
    for name, index in order.items():
        table = splits[name]
        np.testing.assert_array_equal(table["item_id"].to_numpy(), world.rows.target[index])
        np.testing.assert_array_equal(table["label"].to_numpy(), world.label[index])
    index = order["valid"]
    pairs = synth.topic_pair_matrix(TINY)
    terms = synth.click_terms(TINY, world.items, world.users, world.rows, pairs, index)
    assert tuple(terms) == synth.TERMS
    total = sum(terms.values())
    intercept = world.score[index] - total
    np.testing.assert_allclose(intercept, intercept[0], atol=1e-9)  # only the intercept is left
    count = synth.same_topic_count(world, index)
    np.testing.assert_array_equal(count, _same_topic_count(splits["valid"]))
    np.testing.assert_allclose(terms["same_topic_count"], synth.COUNT_WEIGHT * np.log1p(count))


def _taste_from_files(tiny_dir: Path, table: pa.Table) -> np.ndarray:
    """The taste term recomputed row by row from the written files and the generator's factors:
    same-topic behaviours among the last 64, each one's vector against the target's."""
    vectors = np.asarray(
        pq.read_table(tiny_dir / "item_info.parquet")["item_emb_d128"].to_pylist(), np.float64
    )
    topics = synth.item_topics(TINY)
    behaviour, target_side = synth.taste_factors(TINY)
    out = []
    rows = zip(table["item_seq"].to_pylist(), table["item_id"].to_pylist(), strict=True)
    for history, target in rows:
        total = 0.0
        for item in history[-64:]:
            if item > 0 and topics[item] == topics[target]:
                total += float((vectors[item] @ behaviour) @ (vectors[target] @ target_side))
        out.append(synth.TASTE_WEIGHT * total / 64)
    return np.array(out)


def test_taste_term_is_the_relevant_behaviours_vectors_against_the_targets(
    tiny_dir: Path, splits: dict[str, pa.Table]
) -> None:
    """The vectorised term equals a plain per-row loop over the files, and it moves the labels:
    among rows with relevant behaviours, a higher taste value means more clicks."""
    world = synth.make_world(TINY)
    index = synth.split_rows(TINY)["train"]
    pairs = synth.topic_pair_matrix(TINY)
    terms = synth.click_terms(TINY, world.items, world.users, world.rows, pairs, index)
    table = splits["train"]
    expected = _taste_from_files(tiny_dir, table)
    np.testing.assert_allclose(terms["relevant_taste"], expected, rtol=1e-9, atol=1e-9)
    has_relevant = _same_topic_count(table) > 0
    assert expected[~has_relevant].tolist() == [0.0] * int((~has_relevant).sum())
    labels = table["label"].to_numpy()[has_relevant]
    assert roc_auc(labels, expected[has_relevant]) > 0.6


def test_every_topic_and_history_window_helpers() -> None:
    topics = synth.item_topics(TINY)
    assert topics[0] == -1
    assert set(np.unique(topics[1:]).tolist()) == set(range(synth.n_topics(TINY.items)))
    np.testing.assert_array_equal(topics, synth.make_items(TINY).topic)


@pytest.mark.parametrize(
    "argv",
    [
        ["--items", "0"],
        ["--items", "5"],
        ["--users", "0"],
        ["--train-rows", "-1"],
        ["--valid-rows", "0"],
        ["--test-rows", "x"],
        ["--history-max", "0"],
        ["--seed", "-3"],
    ],
)
def test_bad_arguments_are_rejected(argv: list[str], tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as error:
        synth.main(["--out", str(tmp_path / "x"), *argv])
    assert error.value.code == 2
    err = capsys.readouterr().err
    assert "must be at least" in err or "expected an integer" in err
    assert not (tmp_path / "x").exists()


def test_out_must_be_given_and_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        synth.main([])
    afile = tmp_path / "file"
    afile.write_text("")
    with pytest.raises(SystemExit):
        synth.main(["--out", str(afile), "--items", "20", "--users", "2"])


def test_config_validates_directly() -> None:
    with pytest.raises(ValueError, match="users"):
        synth.SynthConfig(users=0)
    with pytest.raises(ValueError, match="items"):
        synth.SynthConfig(items=3)


SMALL = ["--items", "20", "--users", "5", "--train-rows", "60", "--valid-rows", "10"]
SMALL += ["--test-rows", "10"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_meta_json_is_recognised_as_the_generators_own(tiny_dir: Path, tmp_path: Path) -> None:
    assert tuple(f.name for f in fields(synth.SynthConfig)) == synth_meta.FIELDS
    assert synth_meta.written_by_synth(tiny_dir)
    assert synth_meta.refusal(tiny_dir) is None
    assert synth_meta.refusal(tmp_path / "missing") is None and synth_meta.refusal(tmp_path) is None
    (tmp_path / "meta.json").write_text(json.dumps({**asdict(TINY), "source": "MicroLens"}))
    assert not synth_meta.written_by_synth(tmp_path)
    assert "its meta.json is not model.synth" in str(synth_meta.refusal(tmp_path))


@pytest.mark.parametrize("meta", [None, '{"source": "MicroLens_1M_x1"}', "not json"])
def test_a_folder_it_did_not_write_is_refused_and_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], meta: str | None
) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    pq.write_table(pa.table({"user_id": [1, 2]}), theirs / "train.parquet")
    if meta is not None:
        (theirs / "meta.json").write_text(meta)
    before = _snapshot(theirs)
    assert synth.main(["--out", str(theirs), *SMALL]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(theirs) in err[0] and "--overwrite" in err[0], err
    assert _snapshot(theirs) == before
    # Asked explicitly, it writes its files (the same names replaced, others left).
    (theirs / "notes.txt").write_text("mine")
    assert synth.main(["--out", str(theirs), *SMALL, "--overwrite"]) == 0
    assert (theirs / "train.parquet").read_bytes() != before["train.parquet"]
    assert (theirs / "notes.txt").read_text() == "mine"
    assert synth_meta.written_by_synth(theirs)


def test_its_own_folder_is_rewritten_and_an_empty_one_written(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    assert synth.main(["--out", str(out), *SMALL]) == 0
    first = _snapshot(out)
    assert synth.main(["--out", str(out), *SMALL, "--seed", "3"]) == 0
    assert _snapshot(out) != first and synth_meta.written_by_synth(out)


def test_the_standard_library_check_says_what_a_folder_is(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert synth_meta.main([str(tiny_dir)]) == 0
    assert synth_meta.main([str(tmp_path / "new")]) == 0
    assert capsys.readouterr().out.split() == ["generated", "empty"]
    (tmp_path / "item_info.parquet").write_bytes(b"PAR1")
    assert synth_meta.main([str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and str(tmp_path) in captured.err
    assert "no meta.json of model.synth" in captured.err
