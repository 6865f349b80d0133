"""streams/topics.py: the raw schema hands agents the same events as Faust's own raw decode."""
import asyncio

import faust
import pytest
from faust.types.tuples import Message

from streams.topics import RawSchema


@pytest.mark.parametrize("key, value, headers", [
    (b"user-1", b'{"user_id":"user-1"}', []),
    (None, b"\xff\x00not json", [("h", b"v")]),
    (b"", b"", None),
    (b"k", None, []),
])
def test_raw_schema_decodes_as_fausts_raw_serializer_does(key, value, headers):
    app = faust.App("raw-schema-test", key_serializer="raw", value_serializer="raw")
    stock = faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    message = Message("events", 2, 41, 1.5, 0, headers, key, value, None)

    async def both():
        return (await stock.compile(app, default_propagate=True)(message),
                await RawSchema().compile(app)(message))

    expected, got = asyncio.run(both())
    assert type(got) is type(expected)
    assert (got.key, got.value, got.headers, got.message) == (expected.key, expected.value, expected.headers,
                                                               expected.message)
    assert got.app is app
