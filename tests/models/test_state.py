"""models/state.py: the binary layout, its fence bytes, and history folding."""
import numpy as np
import pytest

from models.config import EngineConfig
from models.state import FENCE_SLICE, StateCodec, StateLayoutError, append_history
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
    assert fence_of(values[1]) == (1, 2**40)
    assert values[0][FENCE_SLICE] == np.array([3], "<i4").tobytes() + np.array([10], "<i8").tobytes()


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
