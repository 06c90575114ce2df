"""Kafka's murmur2 partitioner, as in the Java client, aiokafka and Faust.

Every producer must place keys this way or co-partitioning breaks silently
(confluent-kafka's default is CRC32: set ``partitioner: murmur2_random``).
"""

from __future__ import annotations

from functools import lru_cache


def murmur2(data: bytes) -> int:
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = data[i4] | (data[i4 + 1] << 8) | (data[i4 + 2] << 16) | (data[i4 + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    extra = length % 4
    tail = length4 * 4
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka clients choose for ``key`` (positive murmur2 modulo count)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@lru_cache(maxsize=65_536)
def partition_of(key: str, partitions: int) -> int:
    """:func:`partition_for` of a text key, remembered for the keys seen lately (visitors,
    referrers and orders come back within a batch and from one batch to the next)."""
    return partition_for(key.encode(), partitions)
