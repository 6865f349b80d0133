"""models/state.py: the binary layout, its fence bytes, and history folding."""
import numpy as np
import pytest

from models.config import EngineConfig
from models.state import FENCE_INDEX_SLICE, FENCE_SLICE, StateCodec, StateLayoutError, append_history
from models.store import fence_of

CFG = EngineConfig(dim=4, history=3, scenes=("default", "search"), k=2)


def test_encode_decode_round_trip_is_exact():
    codec = StateCodec(CFG)
    states = codec.decode([None, None])
    states["partition"], states["offset"] = [3, 1], [10, 2**40]
    states["interest"] = np.random.default_rng(0).normal(size=states["interest"].shape)
    states["last_list"] = [[4, 5], [6, -1]]
    values = codec.encode(states)
    assert all(len(v) == codec.dtype.itemsize for v in values)
    again = codec.decode(values)
    assert again.tobytes() == states.tobytes()
    assert fence_of(values[1]) == (1, 2**40, 0)
    assert values[0][FENCE_SLICE] == np.array([3], "<i4").tobytes() + np.array([10], "<i8").tobytes()


def test_fence_index_sits_where_the_store_reads_it_and_was_padding_before():
    codec = StateCodec(CFG)
    states = codec.decode([None])
    states["partition"], states["offset"], states["fence_index"] = 2, 7, 513
    value = codec.encode(states)[0]
    assert fence_of(value) == (2, 7, 513)
    assert value[FENCE_INDEX_SLICE] == (513).to_bytes(2, "little")
    # states written before batched messages had zero padding there: they read as index 0
    assert fence_of(codec.encode(codec.decode([None]))[0])[2] == 0


def test_layout_change_is_detected_not_misread():
    old = StateCodec(CFG).encode(StateCodec(CFG).decode([None]))
    with pytest.raises(StateLayoutError, match="expects"):
        StateCodec(EngineConfig(dim=8, history=3, scenes=("default", "search"), k=2)).decode(old)
    same_size = StateCodec(EngineConfig(dim=4, history=3, scenes=("default", "search"), k=2, seed=1))
    assert same_size.decode(old)["n_events"][0] == 0  # the seed is not part of the layout
    with pytest.raises(StateLayoutError, match="different layout"):
        StateCodec(CFG).decode([b"x" * StateCodec(CFG).dtype.itemsize])


def test_history_keeps_the_newest_events_in_order():
    codec = StateCodec(CFG)
    states = codec.decode([None])
    for batch in ([1, 2], [3], [4, 5]):
        n = len(batch)
        append_history(states, np.array([batch]), np.zeros((1, n)), np.zeros((1, n)),
                       np.array([batch], float), np.array([n]))
    assert states["hist_item"].tolist() == [[3, 4, 5]]
    assert states["hist_ts"].tolist() == [[3.0, 4.0, 5.0]]
    assert states["n_events"].tolist() == [5]


OLD = EngineConfig(dim=4, history=3, scenes=("default", "search", "home"), k=3)


def old_states(n=2):
    """States of the ``OLD`` layout with a fence, a full history, interests and a last list."""
    codec = StateCodec(OLD)
    states = codec.decode([None] * n)
    states["partition"], states["offset"], states["n_events"] = 1, [7, 8][:n], 9
    append_history(states, np.array([[11, 12, 13]] * n), np.full((n, 3), 2), np.array([[1, 2, 0]] * n),
                   np.array([[1.0, 2.0, 3.0]] * n), np.full(n, 3))
    states["interest"] = np.arange(n * 3 * 4, dtype=np.float16).reshape(n, 3, 4)
    states["interest_weight"] = [[0.5, 1.5, 2.5]] * n
    states["last_list"] = [[21, 22, 23]] * n
    states["list_scene"] = 2
    return states, codec.encode(states)


def test_states_of_the_previous_layout_are_converted_on_read():
    """history 3 -> 2, k 3 -> 2, scenes (default, search, home) -> (default, home); dim unchanged."""
    new_cfg = EngineConfig(dim=4, history=2, scenes=("default", "home"), k=2,
                           previous_layout="history=3 k=3 scenes=default,search,home")
    states, values = old_states()
    codec = StateCodec(new_cfg)
    current = codec.encode(codec.decode([None]))
    got = codec.decode([values[0], None, current[0], values[1]])
    assert codec.migrated == 2
    old = got[[0, 3]]
    assert old["partition"].tolist() == [1, 1] and old["offset"].tolist() == [7, 8]  # the fence survives
    assert old["n_events"].tolist() == [12, 12]  # 9 set, then 3 appended
    assert old["hist_item"].tolist() == [[12, 13]] * 2 and old["hist_ts"].tolist() == [[2.0, 3.0]] * 2
    assert old["hist_scene"].tolist() == [[1, 0]] * 2  # home -> 1, default stays 0 (search would be 0 too)
    assert old["last_list"].tolist() == [[21, 22]] * 2 and old["list_scene"].tolist() == [1, 1]
    np.testing.assert_array_equal(old["interest"][:, 0], states["interest"][:, 0])   # default
    np.testing.assert_array_equal(old["interest"][:, 1], states["interest"][:, 2])   # home
    assert old["interest_weight"].tolist() == [[0.5, 2.5]] * 2                        # search's is dropped
    # fresh and current states
    assert got["offset"][[1, 2]].tolist() == [-1, -1]
    # written back: current layout
    assert codec.decode(codec.encode(old)).tobytes() == old.tobytes()
    assert codec.migrated == 2


def test_a_longer_history_and_a_new_dim_keep_the_events_and_drop_the_interests():
    new_cfg = EngineConfig(dim=8, history=5, scenes=OLD.scenes, k=4, previous_layout="dim=4 history=3 k=3")
    _, values = old_states(1)
    got = StateCodec(new_cfg).decode(values)
    assert got["hist_item"].tolist() == [[-1, -1, 11, 12, 13]]
    assert got["hist_scene"].tolist() == [[0, 0, 1, 2, 0]]
    assert got["last_list"].tolist() == [[21, 22, 23, -1]]
    assert not got["interest_weight"].any() and not got["interest"].any()


def test_other_layouts_are_still_refused_with_the_migration_named():
    _, values = old_states(1)
    codec = StateCodec(EngineConfig(dim=4, history=2, scenes=("default", "home"), k=2,
                                    previous_layout="history=7"))
    with pytest.raises(StateLayoutError, match="not in the previous layout either .*history=7"):
        codec.decode(values)
    assert codec.migrated == 0
    with pytest.raises(ValueError, match="unknown key"):
        StateCodec(EngineConfig(previous_layout="size=3"))
