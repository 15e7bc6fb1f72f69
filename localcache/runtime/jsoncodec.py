"""JSON encode/decode for the hot path: orjson when installed, the standard library otherwise.

Every watch event is decoded once and, in compact storage, encoded once; orjson does both several
times faster than ``json`` and shares the ``str`` objects of repeated short keys across documents,
which also makes parsed objects smaller. Output is the same JSON either way (compact separators,
UTF-8), so stores and tests do not depend on which one is in use.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["BACKEND", "canonical", "dumps", "dumps_exact", "loads"]

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    _orjson = None


def _std_dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _std_canonical(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()


if _orjson is not None:
    BACKEND = "orjson"
    loads = _orjson.loads
    _fast_dumps = _orjson.dumps

    def dumps(obj: Any) -> bytes:
        try:
            return _fast_dumps(obj)
        except TypeError:  # e.g. an integer beyond 64 bits: let the standard library handle it
            return _std_dumps(obj)

    def canonical(obj: Any) -> bytes:
        """Keys sorted: equal values give equal bytes (to hash or compare; wrap in
        :func:`dumps_exact`'s copy before keeping many)."""
        try:
            return _fast_dumps(obj, option=_orjson.OPT_SORT_KEYS)
        except TypeError:
            return _std_canonical(obj)

    def dumps_exact(obj: Any) -> bytes:
        """Like :func:`dumps`, in a buffer of exactly the output's size, for bytes that are kept.

        orjson returns its (larger) working buffer; tracemalloc showed ~8 KiB held per 1 KiB object.
        """
        return bytes(memoryview(dumps(obj)))

else:  # pragma: no cover
    BACKEND = "json"
    loads = json.loads
    dumps = _std_dumps
    dumps_exact = _std_dumps
    canonical = _std_canonical
