"""Offline loaders: each public dataset in ``shared/data`` read into a time-ordered :class:`EventLog`.

Reads files only; never writes. How each source is mapped to event types, timestamps and scenes is
recorded in the log's ``notes`` so every result can say which mapping it used.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from models.events import DEFAULT_SCENE, TYPE_CODE, EventLog
from models.splits import head, leave_one_out, subset  # noqa: F401 -- part of this module's interface

# The setting streams.settings.Settings.data_dir, read here directly: models/ imports nothing from streams/.
DATA_ENV = "ATTNFLOW_DATA_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the repo

# UTC hour ranges; the sources give no local time zone, so "daypart" is a UTC clock bucket.
DAYPARTS = ("night", "morning", "afternoon", "evening")


class MalformedLineError(ValueError):
    """A source line that cannot be parsed; the message names the file and the 1-based line number."""


def data_dir() -> Path:
    """The folder that holds the datasets: ``$ATTNFLOW_DATA_DIR`` if set, else ``../shared/data`` beside the
    repository. ``FileNotFoundError`` (which the data tests turn into a skip) when it is not a directory.

    >>> os.environ[DATA_ENV] = "/nonexistent/attnflow-data"
    >>> try:
    ...     data_dir()
    ... except FileNotFoundError as err:
    ...     print("ATTNFLOW_DATA_DIR" in str(err))
    ... finally:
    ...     del os.environ[DATA_ENV]
    True
    """
    configured = os.environ.get(DATA_ENV)
    if configured:
        path = Path(configured)
        if not path.is_dir():
            raise FileNotFoundError(f"${DATA_ENV} points to {path}, which is not a directory")
        return path
    if DEFAULT_DATA_DIR.is_dir():
        return DEFAULT_DATA_DIR
    raise FileNotFoundError(f"no dataset folder at {DEFAULT_DATA_DIR}: set ${DATA_ENV} to the logs' folder")


_default_data_dir = data_dir  # ``load`` takes a ``data_dir`` argument that shadows the function


def _lines(path: Path, skip_header: bool = False) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped line) for every non-blank line."""
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if skip_header and lineno == 1:
                continue
            line = line.strip()
            if line:
                yield lineno, line


def _malformed(path: Path, lineno: int, line: str, why: str) -> MalformedLineError:
    return MalformedLineError(f"{path}:{lineno}: {why}: {line[:200]!r}")


def _daypart(ts: np.ndarray) -> np.ndarray:
    return ((ts // 3600) % 24 // 6).astype(np.int8)


def _check_scene(dataset: str, scene: str | None, supported: tuple[str, ...]) -> None:
    if scene is not None and scene not in supported:
        raise ValueError(f"{dataset}: scene={scene!r} not supported; choose from {supported} or None")


def load_tmall(root: Path, scene: str | None = None) -> EventLog:
    """Tmall 2014 brand log. Items are brands; timestamps are UTC midnight of the ``M-D`` day in 2013.

    ``scene="type"`` uses the source behaviour (click/buy/favourite/cart) as the scene.
    """
    _check_scene("tmall", scene, ("type",))
    path = root / "tmall2014-brand-behavior" / "t_alibaba_data.csv"
    # Source codes: 0 click, 1 buy, 2 favourite (collect), 3 cart. Favourite has no own type -> cart.
    source_names = ("click", "buy", "favourite", "cart")
    to_type = np.array([TYPE_CODE["click"], TYPE_CODE["purchase"], TYPE_CODE["cart"], TYPE_CODE["cart"]],
                       np.int8)
    day_seconds: dict[str, float] = {}
    users, items, codes, ts = [], [], [], []
    for lineno, line in _lines(path, skip_header=True):
        parts = line.split(",")
        if len(parts) != 4:
            raise _malformed(path, lineno, line, "expected 4 comma-separated fields")
        user, brand, code, day = parts
        seconds = day_seconds.get(day)
        if seconds is None:
            try:
                month, dom = (int(x) for x in day.split("-"))
                seconds = datetime(2013, month, dom, tzinfo=timezone.utc).timestamp()
            except ValueError:
                raise _malformed(path, lineno, line, "visit_datetime is not M-D") from None
            day_seconds[day] = seconds
        if code not in ("0", "1", "2", "3"):
            raise _malformed(path, lineno, line, "type must be 0, 1, 2 or 3")
        users.append(user)
        items.append(brand)
        codes.append(int(code))
        ts.append(seconds)
    codes = np.asarray(codes, np.int8)
    notes = ("tmall: type 0 click->click, 1 buy->purchase, 2 favourite->cart, 3 cart->cart; "
             "items are brands; ts = UTC midnight of M-D 2013 (day resolution, file order kept within a day)")
    if scene == "type":
        notes += "; scene = source behaviour"
        return EventLog.from_columns("tmall2014-brand-behavior", users, items, to_type[codes], ts,
                                     scenes=codes, scene_names=source_names, notes=notes)
    return EventLog.from_columns("tmall2014-brand-behavior", users, items, to_type[codes], ts,
                                 notes=notes + "; single scene 'default'")


def load_taobao(root: Path, scene: str | None = None, n_scenes: int = 4) -> EventLog:
    """Taobao UserBehavior (43 users). ``scene``: ``"category"`` (category id mod ``n_scenes``),
    ``"type"`` (source behaviour) or ``"daypart"`` (UTC hour bucket)."""
    _check_scene("taobao", scene, ("category", "type", "daypart"))
    path = root / "taobao-userbehavior-43users" / "UserBehavior_43users.csv"
    behaviours = ("pv", "cart", "fav", "buy")
    to_type = {"pv": TYPE_CODE["view"], "cart": TYPE_CODE["cart"], "fav": TYPE_CODE["cart"],
               "buy": TYPE_CODE["purchase"]}
    users, items, categories, behaviour_codes, types, ts = [], [], [], [], [], []
    for lineno, line in _lines(path):
        parts = line.split(",")
        if len(parts) != 5:
            raise _malformed(path, lineno, line, "expected 5 comma-separated fields")
        user, item, category, behaviour, stamp = parts
        if behaviour not in to_type:
            raise _malformed(path, lineno, line, f"behaviour must be one of {behaviours}")
        try:
            ts.append(float(int(stamp)))
            categories.append(int(category))
        except ValueError:
            raise _malformed(path, lineno, line, "category and timestamp must be integers") from None
        users.append(user)
        items.append(item)
        behaviour_codes.append(behaviours.index(behaviour))
        types.append(to_type[behaviour])
    notes = ("taobao: pv->view, cart->cart, fav->cart, buy->purchase; ts Unix seconds "
             "(one out-of-range 2017-09-11 row kept as in the source)")
    scenes, scene_names = None, (DEFAULT_SCENE,)
    if scene == "category":
        if not 1 <= n_scenes <= 127:
            raise ValueError("n_scenes must be in 1..127")
        scenes = np.asarray(categories, np.int64) % n_scenes
        scene_names = tuple(f"category_mod{n_scenes}_{b}" for b in range(n_scenes))
        notes += f"; scene = category_id mod {n_scenes}"
    elif scene == "type":
        scenes, scene_names = behaviour_codes, behaviours
        notes += "; scene = source behaviour"
    elif scene == "daypart":
        scenes, scene_names = _daypart(np.asarray(ts)), DAYPARTS
        notes += "; scene = UTC daypart (6 h buckets)"
    else:
        notes += "; single scene 'default'"
    return EventLog.from_columns("taobao-userbehavior-43users", users, items, types, ts, scenes=scenes,
                                 scene_names=scene_names, notes=notes)


def load_otto(root: Path, scene: str | None = None) -> EventLog:
    """OTTO session fixture: session = user, ``aid`` = item, ms -> s. ``scene``:
    ``"type"`` or ``"daypart"``."""
    _check_scene("otto", scene, ("type", "daypart"))
    path = root / "otto-sample" / "train_sample.jsonl"
    source_types = ("clicks", "carts", "orders")
    to_type = {"clicks": TYPE_CODE["click"], "carts": TYPE_CODE["cart"], "orders": TYPE_CODE["purchase"]}
    users, items, types, source_codes, ts = [], [], [], [], []
    for lineno, line in _lines(path):
        try:
            session = json.loads(line)
            user = str(session["session"])
            for event in session["events"]:
                kind = event["type"]
                if kind not in to_type:
                    raise ValueError(kind)
                items.append(str(event["aid"]))
                ts.append(event["ts"] / 1000.0)
                types.append(to_type[kind])
                source_codes.append(source_types.index(kind))
                users.append(user)
        except (ValueError, KeyError, TypeError) as err:
            raise _malformed(path, lineno, line,
                             f"not an OTTO session ({type(err).__name__}: {err})") from None
    notes = "otto: session = user, aid = item, clicks->click, carts->cart, orders->purchase; ts ms -> s"
    scenes, scene_names = None, (DEFAULT_SCENE,)
    if scene == "type":
        scenes, scene_names = source_codes, source_types
        notes += "; scene = source type"
    elif scene == "daypart":
        scenes, scene_names = _daypart(np.asarray(ts)), DAYPARTS
        notes += "; scene = UTC daypart (6 h buckets)"
    else:
        notes += "; single scene 'default'"
    return EventLog.from_columns("otto-sample", users, items, types, ts, scenes=scenes,
                                 scene_names=scene_names, notes=notes)


def load_yoochoose(root: Path, scene: str | None = None,
                   parts: tuple[str, ...] = ("train_full", "test")) -> EventLog:
    """YooChoose clicks sample. ``train_full`` + ``test`` is the whole sample; ``train_tr`` and
    ``train_valid`` are a split of ``train_full`` and would duplicate it. ``scene``: ``"daypart"``."""
    _check_scene("yoochoose", scene, ("daypart",))
    folder = root / "yoochoose-clicks-100k"
    users, items, ts = [], [], []
    for part in parts:
        path = folder / f"yoochoose-clicks-100k_{part}.txt"
        for lineno, line in _lines(path, skip_header=True):
            fields = line.split("\t")
            if len(fields) != 3:
                raise _malformed(path, lineno, line, "expected 3 tab-separated fields")
            try:
                ts.append(float(fields[2]))
            except ValueError:
                raise _malformed(path, lineno, line, "Time is not a number") from None
            users.append(fields[0])
            items.append(fields[1])
    notes = f"yoochoose: files {'+'.join(parts)}; session = user; every event is a click; ts Unix seconds"
    scenes, scene_names = None, (DEFAULT_SCENE,)
    if scene == "daypart":
        scenes, scene_names = _daypart(np.asarray(ts)), DAYPARTS
        notes += "; scene = UTC daypart (6 h buckets)"
    else:
        notes += "; single scene 'default'"
    return EventLog.from_columns("yoochoose-clicks-100k", users, items, np.full(len(ts), TYPE_CODE["click"]),
                                 ts, scenes=scenes, scene_names=scene_names, notes=notes)


def load_movielens(root: Path, scene: str | None = None, purchase_threshold: int | None = None) -> EventLog:
    """MovieLens 100K ratings as implicit events. Every rating is a ``view``; with
    ``purchase_threshold=4`` ratings >= 4 become ``purchase``. ``scene``: ``"genre"`` (first listed
    genre of the movie, from ``u.item``) or ``"daypart"``."""
    _check_scene("ml-100k", scene, ("genre", "daypart"))
    folder = root / "ml-100k"
    path = folder / "u.data"
    users, items, ratings, ts = [], [], [], []
    for lineno, line in _lines(path):
        fields = line.split("\t")
        if len(fields) != 4:
            raise _malformed(path, lineno, line, "expected 4 tab-separated fields")
        try:
            ratings.append(int(fields[2]))
            ts.append(float(int(fields[3])))
        except ValueError:
            raise _malformed(path, lineno, line, "rating and timestamp must be integers") from None
        users.append(fields[0])
        items.append(fields[1])
    ratings = np.asarray(ratings)
    if purchase_threshold is None:
        types = np.full(len(ratings), TYPE_CODE["view"])
        notes = "ml-100k: every rating -> view"
    else:
        types = np.where(ratings >= purchase_threshold, TYPE_CODE["purchase"], TYPE_CODE["view"])
        notes = f"ml-100k: rating >= {purchase_threshold} -> purchase, lower ratings -> view"
    notes += "; ts Unix seconds, file order within a second"
    scenes, scene_names = None, (DEFAULT_SCENE,)
    if scene == "genre":
        scene_names, movie_genre = _movielens_genres(folder)
        scenes = [movie_genre.get(item, 0) for item in items]
        notes += "; scene = first genre of the movie in u.item"
    elif scene == "daypart":
        scenes, scene_names = _daypart(np.asarray(ts)), DAYPARTS
        notes += "; scene = UTC daypart (6 h buckets)"
    else:
        notes += "; single scene 'default'"
    return EventLog.from_columns("ml-100k", users, items, types, ts, scenes=scenes, scene_names=scene_names,
                                 notes=notes)


def _movielens_genres(folder: Path) -> tuple[tuple[str, ...], dict[str, int]]:
    genres = []
    for lineno, line in _lines(folder / "u.genre"):
        name, _, code = line.partition("|")
        if int(code) != len(genres):
            raise _malformed(folder / "u.genre", lineno, line, "genre codes must be 0, 1, 2, ...")
        genres.append(name)
    movie_genre = {}
    with open(folder / "u.item", encoding="latin-1") as handle:  # titles are Latin-1 in this release
        for lineno, line in enumerate(handle, start=1):
            fields = line.rstrip("\n").split("|")
            if len(fields) != 5 + len(genres):
                raise _malformed(folder / "u.item", lineno, line,
                                 f"expected {5 + len(genres)} |-separated fields")
            flags = fields[5:]
            movie_genre[fields[0]] = flags.index("1") if "1" in flags else 0
    return tuple(genres), movie_genre


def load_beauty(root: Path, scene: str | None = None, synthetic_ts: str = "position") -> EventLog:
    """Amazon Beauty sequences; all events are ``view``. The source has order only, so ``ts`` is
    synthetic: ``"position"`` (k-th item of every user at ts = k, users interleaved; the default) or
    ``"line"`` (one global counter in file order, users one after another). No scene source."""
    _check_scene("amazon-beauty", scene, ())
    if synthetic_ts not in ("position", "line"):
        raise ValueError("synthetic_ts must be 'position' or 'line'")
    path = root / "amazon-beauty" / "Beauty.txt"
    users, items, ts = [], [], []
    for lineno, line in _lines(path):
        fields = line.split(" ")
        if len(fields) < 2 or not all(f.isdigit() for f in fields):
            raise _malformed(path, lineno, line, "expected 'user item1 item2 ...' with integer ids")
        sequence = fields[1:]
        start = len(ts) if synthetic_ts == "line" else 0
        users.extend([fields[0]] * len(sequence))
        items.extend(sequence)
        ts.extend(range(start, start + len(sequence)))
    notes = (f"amazon-beauty: every interaction -> view; synthetic ts = {synthetic_ts} index "
             "(position: k-th item of each user at ts=k, ties in file order); single scene 'default'")
    log = EventLog.from_columns("amazon-beauty", users, items, np.full(len(ts), TYPE_CODE["view"]), ts,
                                notes=notes)
    log.extra["synthetic_ts"] = synthetic_ts
    return log


MOVIE_BOOK = "amazon-movie-book-2scene"
MOVIE_BOOK_FIRST_BOOK = 36845  # item indices below this are movies (the line count of items_a.txt)
MOVIE_BOOK_SPLITS = {"test": "test_new.txt", "val": "val_new.txt"}


def load_movie_book(root: Path, scene: str | None = None, split: str = "test") -> EventLog:
    """Amazon movies + books (C2DSR): one log, two scenes (``movie`` = 0, ``book`` = 1), each item's
    scene its domain. ``split``: ``"test"`` (``test_new.txt``, the default) or ``"val"`` (``val_new.txt``;
    disjoint users, for choosing hyperparameters).

    Every review is a ``view``. Timestamps are days; within a user the file order is kept, so an event
    dated before its predecessor (a few per cent) takes the predecessor's date (running maximum); users
    are merged by a stable sort (ties: file order). ``extra["item_scene"]`` is each item code's scene and
    ``extra["exclude_seen"]`` says the evaluator excludes the user's seen items (no user reviews twice).
    """
    _check_scene("amazon-movie-book", scene, ())  # the scene is always the item's domain
    if split not in MOVIE_BOOK_SPLITS:
        raise ValueError(f"split must be one of {sorted(MOVIE_BOOK_SPLITS)}, got {split!r}")
    path = root / MOVIE_BOOK / MOVIE_BOOK_SPLITS[split]
    users, items, ts = [], [], []
    lifted = 0
    for lineno, line in _lines(path):
        fields = line.split("\t")
        if len(fields) < 3:
            raise _malformed(path, lineno, line, "expected 'user_index<TAB>x<TAB>item|ts|date ...'")
        latest = -np.inf
        for event in fields[2:]:
            parts = event.split("|")
            if len(parts) < 2 or not parts[0].isdigit():
                raise _malformed(path, lineno, line, f"event {event[:60]!r} is not 'item|unix_seconds|date'")
            try:
                stamp = float(int(parts[1]))
            except ValueError:
                why = f"event {event[:60]!r} has no integer timestamp"
                raise _malformed(path, lineno, line, why) from None
            if stamp < latest:
                lifted += 1
            latest = max(latest, stamp)
            users.append(fields[0])
            items.append(parts[0])
            ts.append(latest)
    notes = (f"amazon-movie-book: {MOVIE_BOOK_SPLITS[split]}; every review -> view; scene = item domain "
             f"(index < {MOVIE_BOOK_FIRST_BOOK}: movie, else book); ts day resolution, file order kept "
             f"within a user ({lifted} events dated before their predecessor take its date), users merged "
             "by a stable sort; no repeats, seen items excluded from candidates")
    scenes = [int(int(item) >= MOVIE_BOOK_FIRST_BOOK) for item in items]
    log = EventLog.from_columns(MOVIE_BOOK, users, items, np.full(len(ts), TYPE_CODE["view"]), ts,
                                scenes=scenes, scene_names=("movie", "book"), notes=notes)
    log.extra["item_scene"] = np.array([int(int(i) >= MOVIE_BOOK_FIRST_BOOK) for i in log.item_ids], np.int8)
    log.extra["exclude_seen"] = True
    log.extra["split"] = split
    return log


DATASETS: dict[str, Callable[..., EventLog]] = {
    "tmall2014-brand-behavior": load_tmall,
    "taobao-userbehavior-43users": load_taobao,
    "otto-sample": load_otto,
    "yoochoose-clicks-100k": load_yoochoose,
    "ml-100k": load_movielens,
    "amazon-beauty": load_beauty,
    MOVIE_BOOK: load_movie_book,
}
ALIASES = {"tmall": "tmall2014-brand-behavior", "taobao": "taobao-userbehavior-43users",
           "otto": "otto-sample", "yoochoose": "yoochoose-clicks-100k", "movielens": "ml-100k",
           "beauty": "amazon-beauty", "moviebook": MOVIE_BOOK}


def load(name: str, data_dir: str | Path | None = None, **opts) -> EventLog:
    """Load dataset ``name`` (a :data:`DATASETS` key or an :data:`ALIASES` key) as a time-ordered log.

    >>> sorted(ALIASES) == sorted(["tmall", "taobao", "otto", "yoochoose", "movielens", "beauty",
    ...                            "moviebook"])
    True
    """
    key = ALIASES.get(name, name)
    if key not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)} (aliases {sorted(ALIASES)})")
    root = Path(data_dir) if data_dir is not None else _default_data_dir()
    return DATASETS[key](root, **opts)


__all__ = ["DATASETS", "ALIASES", "DATA_ENV", "MalformedLineError", "data_dir", "load", "subset",
           "leave_one_out", "head"]
