"""``--shard I/N``: the share of the inputs one of N machines explains (job arrays).

A source belongs to shard ``int(sha256(rel).hexdigest()[:16], 16) % N``, where ``rel`` is its
relative output name (posix, as bytes via ``os.fsencode`` so names that are not UTF-8 work).
The split depends neither on the machine that lists the inputs nor on their order, the N
shards are disjoint and together complete, and a source never changes shard when inputs are
added (the hash of its name, not its position, decides).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from camcli.errors import UsageError
from camcli.sources import Source

__all__ = ["Shard", "parse_shard", "select_sources", "shard_of"]

_SPEC = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    @property
    def name(self) -> str:
        """``shard-I-of-N``: how its manifest part, lock file and temp folder are named."""
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(spec: str) -> Shard:
    """``"I/N"`` -> Shard; UsageError (exit 2) unless 0 <= I < N."""
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise UsageError(f"--shard {spec!r}: expected I/N, such as 0/4 (shard I of N, from 0)")
    index, count = int(match[1]), int(match[2])
    if count < 1:
        raise UsageError(f"--shard {spec!r}: N must be at least 1")
    if index >= count:
        raise UsageError(f"--shard {spec!r}: I must be from 0 to {count - 1}")
    return Shard(index, count)


def shard_of(rel: str | PurePosixPath, count: int) -> int:
    """The shard (of ``count``) the source with relative output name ``rel`` belongs to."""
    name = rel.as_posix() if isinstance(rel, PurePosixPath) else rel
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()
    return int(digest[:16], 16) % count


def select_sources(sources: Iterable[Source], shard: Shard | None) -> list[Source]:
    """The sources of ``shard``, in their order; all of them when ``shard`` is None."""
    if shard is None:
        return list(sources)
    return [s for s in sources if shard_of(s.rel, shard.count) == shard.index]
