"""murmur2 placement must equal the Java client's (and so aiokafka's and Faust's)."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.partitioner import murmur2, partition_for

# Values from the Java client's UtilsTest.testMurmur2
JAVA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("data, expected", JAVA_VECTORS.items())
def test_java_vectors(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected & 0xFFFFFFFF


def test_same_partition_as_aiokafka() -> None:
    partitioner = DefaultPartitioner()
    parts = list(range(8))
    for i in range(2000):
        key = f"s42-vis-{i:07d}".encode()
        assert partition_for(key, 8) == partitioner(key, parts, parts)
