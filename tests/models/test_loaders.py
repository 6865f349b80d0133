"""Loaders on the small real fixtures (skipped without the shared data folder) and on synthetic files."""
from __future__ import annotations

import numpy as np
import pytest

from models import loaders
from models.events import TYPE_CODE, EventLog


def _data_root():
    try:
        return loaders.data_dir()
    except FileNotFoundError as err:
        pytest.skip(f"shared dataset folder absent ({err})")


@pytest.mark.data
def test_taobao_fixture_counts_types_and_order():
    log = loaders.load("taobao-userbehavior-43users", data_dir=_data_root())
    assert (len(log), log.n_users, log.n_items) == (4321, 43, 3276)  # SOURCE.md statistics
    counts = np.bincount(log.type, minlength=4)
    # pv 3,926 -> view; cart 190 + fav 128 -> cart; buy 77 -> purchase
    assert counts.tolist() == [3926, 0, 190 + 128, 77]
    assert np.all(np.diff(log.ts) >= 0)
    assert log.ts[0] == pytest.approx(1505117760, abs=86400)  # the 2017-09-11 outlier row comes first
    assert log.scene_names == ("default",) and not log.scene.any()


@pytest.mark.data
def test_taobao_category_scenes():
    log = loaders.load("taobao", data_dir=_data_root(), scene="category", n_scenes=3)
    assert len(log.scene_names) == 3 and set(np.unique(log.scene)) == {0, 1, 2}
    assert "category_id mod 3" in log.notes


@pytest.mark.data
def test_otto_fixture_counts_types_and_order():
    log = loaders.load("otto-sample", data_dir=_data_root())
    assert (len(log), log.n_users, log.n_items) == (862, 20, 510)
    assert np.bincount(log.type, minlength=4).tolist() == [0, 800, 52, 10]
    assert np.all(np.diff(log.ts) >= 0)
    # 2022-07-31 22:00 UTC .. 2022-08-28 21:59 UTC, in seconds (not milliseconds)
    assert 1659304800 <= log.ts[0] < 1659308400 and log.ts[-1] < 1661731200


def test_tmall_parser_maps_types_days_and_keeps_file_order(tmp_path):
    folder = tmp_path / "tmall2014-brand-behavior"
    folder.mkdir()
    (folder / "t_alibaba_data.csv").write_text(
        "user_id,brand_id,type,visit_datetime\n"
        "1,10,0,6-4\n1,11,2,6-4\n2,10,1,4-15\n2,12,3,6-4\n")
    log = loaders.load("tmall", data_dir=tmp_path, scene="type")
    # 4-15 first, then 6-4 in file order
    assert [log.item_ids[i] for i in log.item] == ["10", "10", "11", "12"]
    assert log.type.tolist() == [TYPE_CODE["purchase"], TYPE_CODE["click"], TYPE_CODE["cart"],
                                 TYPE_CODE["cart"]]
    assert log.ts[0] == 1365984000.0  # 2013-04-15 00:00 UTC
    assert [log.scene_names[s] for s in log.scene] == ["buy", "click", "favourite", "cart"]


def test_malformed_line_names_file_and_line(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t2\t5\t881250949\n1\t3\tfive\t881250950\n")
    with pytest.raises(loaders.MalformedLineError, match=r"u\.data:2:"):
        loaders.load("ml-100k", data_dir=tmp_path)


def test_movielens_purchase_threshold_is_recorded(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t2\t5\t300\n1\t3\t3\t100\n2\t2\t4\t200\n")
    log = loaders.load("ml-100k", data_dir=tmp_path, purchase_threshold=4)
    assert log.type.tolist() == [TYPE_CODE["view"], TYPE_CODE["purchase"], TYPE_CODE["purchase"]]
    assert "rating >= 4 -> purchase" in log.notes


def test_beauty_synthetic_timestamps_interleave_users(tmp_path):
    folder = tmp_path / "amazon-beauty"
    folder.mkdir()
    (folder / "Beauty.txt").write_text("1 5 6 7\n2 8 9\n")
    log = loaders.load("beauty", data_dir=tmp_path)
    assert [log.item_ids[i] for i in log.item] == ["5", "8", "6", "9", "7"]
    assert log.ts.tolist() == [0, 0, 1, 1, 2]


def test_unknown_scene_and_dataset_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="scene"):
        loaders.load("beauty", data_dir=tmp_path, scene="type")
    with pytest.raises(KeyError, match="unknown dataset"):
        loaders.load("nope", data_dir=tmp_path)


def test_data_dir_env_must_exist(monkeypatch, tmp_path):
    monkeypatch.setenv(loaders.DATA_ENV, str(tmp_path))
    assert loaders.data_dir() == tmp_path
    monkeypatch.setenv(loaders.DATA_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="ATTNFLOW_DATA_DIR"):
        loaders.data_dir()


def test_leave_one_out_split():
    users = ["a"] * 5 + ["b"] * 2 + ["c"] * 3
    items = ["i1", "i2", "i3", "i4", "i5", "j1", "j2", "k1", "k2", "k3"]
    ts = [0, 1, 2, 3, 4, 0, 1, 5, 6, 7]
    log = EventLog.from_columns("toy", users, items, [0] * 10, ts)
    train, valid, test = loaders.leave_one_out(log)

    def names(part):
        return sorted(log.item_ids[i] for i in part.item)

    assert names(test) == ["i5", "k3"] and names(valid) == ["i4", "k2"]
    assert names(train) == ["i1", "i2", "i3", "j1", "j2", "k1"]  # b has < 3 events: train only
    assert len(train) + len(valid) + len(test) == len(log)
    assert np.all(np.diff(train.ts) >= 0) and train.n_items == log.n_items


def _movie_book_file(root, name="test_new.txt"):
    folder = root / loaders.MOVIE_BOOK
    folder.mkdir(exist_ok=True)
    book = loaders.MOVIE_BOOK_FIRST_BOOK
    day = 86400
    (folder / name).write_text(
        f"7\t3\t5|{2 * day}|d|\t{book + 1}|{day}|d|\t9|{3 * day}|d|\t\n"   # 2nd event dated before the 1st
        f"8\t4\t{book + 1}|{2 * day}|d|\t6|{2 * day}|d|\t\n")
    return folder


def test_movie_book_parser_keeps_user_order_and_item_scenes(tmp_path):
    _movie_book_file(tmp_path)
    log = loaders.load("moviebook", data_dir=tmp_path)
    book = str(loaders.MOVIE_BOOK_FIRST_BOOK + 1)
    # user 7's inverted event takes its predecessor's date (day 2); ties at day 2 keep file order: 7 then 8
    assert [(log.user_ids[u], log.item_ids[i]) for u, i in zip(log.user, log.item)] == [
        ("7", "5"), ("7", book), ("8", book), ("8", "6"), ("7", "9")]
    assert log.ts.tolist() == [2 * 86400.0] * 4 + [3 * 86400.0]
    assert log.scene_names == ("movie", "book")
    assert [log.scene_names[s] for s in log.scene] == ["movie", "book", "book", "movie", "movie"]
    assert {log.item_ids[i]: int(s) for i, s in enumerate(log.extra["item_scene"])} == {
        "5": 0, book: 1, "6": 0, "9": 0}
    assert (log.type == TYPE_CODE["view"]).all() and log.extra["exclude_seen"]
    assert "1 events dated before their predecessor" in log.notes and "test_new.txt" in log.notes


def test_movie_book_split_option(tmp_path):
    _movie_book_file(tmp_path, "val_new.txt")
    assert "val_new.txt" in loaders.load("moviebook", data_dir=tmp_path, split="val").notes
    with pytest.raises(ValueError, match="split"):
        loaders.load("moviebook", data_dir=tmp_path, split="train")
    with pytest.raises(FileNotFoundError):
        loaders.load("moviebook", data_dir=tmp_path)  # no test_new.txt here


def test_movie_book_malformed_event(tmp_path):
    folder = tmp_path / loaders.MOVIE_BOOK
    folder.mkdir()
    (folder / "test_new.txt").write_text("1\t2\t5|100|d|\n2\t3\t5;100\n")
    with pytest.raises(loaders.MalformedLineError, match=r"test_new\.txt:2:"):
        loaders.load("moviebook", data_dir=tmp_path)


@pytest.mark.data
@pytest.mark.parametrize("split, users, events, switches", [("val", 7644, 73476, 26930),
                                                             ("test", 7708, 74729, 27137)])
def test_movie_book_files_match_source_statistics(split, users, events, switches):
    root = _data_root()
    if not (root / loaders.MOVIE_BOOK).is_dir():
        pytest.skip(f"{root / loaders.MOVIE_BOOK} absent")
    log = loaders.load("moviebook", data_dir=root, split=split)
    assert (len(log), log.n_users) == (events, users)  # SOURCE.md statistics
    assert np.all(np.diff(log.ts) >= 0)
    pairs = log.user.astype(np.int64) * log.n_items + log.item
    assert np.unique(pairs).size == len(log)  # no user reviews an item twice: excluding seen items is safe
    assert (log.scene == log.extra["item_scene"][log.item]).all()
    order = np.lexsort((np.arange(len(log)), log.user))
    same_user = log.user[order][1:] == log.user[order][:-1]
    assert int((same_user & (log.scene[order][1:] != log.scene[order][:-1])).sum()) == switches
