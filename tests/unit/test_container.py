"""Messages as one Avro object container (schemas.container): what ClickHouse decodes for the
derived sink. fastavro, an independent reader, must read back every record as our codec
does."""

import io

import fastavro
import pytest

from processors.window_batches import WINDOWS_UPDATED, pack_window_partials
from schemas.codec import WireCodec
from schemas.container import items_in, object_container, zigzag_long
from tests.unit.processors_factories import fold_simulated


@pytest.fixture(scope="module")
def messages():
    """satisfaction.windows_updated messages of 5,000 simulated events in three partitions."""
    codec = WireCodec()
    packed = [r for r in pack_window_partials(fold_simulated(5_000, seed=4, partitions=3))
              if r["event_type"] == WINDOWS_UPDATED]
    assert len(packed) >= 3
    return codec, [codec.encode(r) for r in packed]


@pytest.mark.parametrize("n", [0, 1, -1, 63, -64, 64, 8191, -8193, 2**40, -(2**62)])
def test_a_long_is_written_as_avro_writes_it(n):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", n)
    assert zigzag_long(n) == buf.getvalue()


def test_the_bodies_of_messages_read_back_as_one_container(messages):
    codec, encoded = messages
    definition = codec.catalogue.latest(WINDOWS_UPDATED).definition
    container = object_container(definition, [m[5:] for m in encoded])
    read = list(fastavro.reader(io.BytesIO(container), return_record_name=False))
    decoded = [codec.decode(m)[0] for m in encoded]
    assert len(read) == len(decoded)
    for got, want in zip(read, decoded):
        assert str(got["event_id"]) == want["event_id"]  # fastavro gives a UUID
        assert [p["version"] for p in got["partials"]] == [p["version"] for p in want["partials"]]
        assert got["partials"][0]["first_response_buckets"] == \
            want["partials"][0]["first_response_buckets"]


def test_the_items_of_an_array_are_counted_without_decoding(messages):
    codec, encoded = messages
    definition = codec.catalogue.latest(WINDOWS_UPDATED).definition
    for m in encoded:
        assert items_in(definition, m[5:], "partials") == len(codec.decode(m)[0]["partials"])
    with pytest.raises(KeyError):
        items_in(definition, encoded[0][5:], "no_such_field")
