"""Per-(run seed, column, row) 64-bit random states, independent of how rows are grouped.

``state(row) = mix64(base + (row + 1) * GAMMA)`` with ``base = mix64(mix64(seed) ^ column_key)``
and ``column_key`` the 64-bit blake2b digest of the column name: splitmix64 indexed by the global
row, so any row-group split sees the same state for the same row. ``mix64`` is splitmix64's
finalizer; further words for one draw come from :func:`next_state`.
"""

from __future__ import annotations

import hashlib

MASK64 = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15
_UNIT = 2.0**-53


def mix64(value: int) -> int:
    """splitmix64's output function: a bijection on 64-bit ints with strong avalanche."""
    z = value & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def column_key(column: str) -> int:
    """A stable 64-bit key of a column name (same on every machine and Python version)."""
    digest = hashlib.blake2b(column.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def column_base(seed: int, key: int) -> int:
    """The stream base of one column under one run seed (seeds are taken modulo 2**64)."""
    return mix64(mix64(seed & MASK64) ^ key)


def row_state(base: int, row_index: int) -> int:
    """The 64-bit state of global row ``row_index`` in the stream starting at ``base``."""
    return mix64(base + (row_index + 1) * GAMMA)


def next_state(state: int) -> int:
    """Another 64-bit word derived from ``state``, for draws that need more than one."""
    return mix64(state + GAMMA)


def unit_float(state: int) -> float:
    """A float in ``[0, 1)`` from the top 53 bits of ``state``."""
    return (state >> 11) * _UNIT


def below(state: int, bound: int) -> int:
    """An int in ``[0, bound)`` for ``1 <= bound <= 2**64`` (multiply-shift; bias < bound/2**64)."""
    return (state * bound) >> 64
