"""The ingest's ledger: which pixels are stored, which items were dropped and why.

One Ray actor per ingest. Every decode task asks it, once per block, "has anyone
stored these pixels yet?" (exact duplicates: same SHA-256 of the stored pixels, in
any block) and reports its unusable items. It remembers which key claimed each
pixel hash, so a task that Ray retries after a failure re-admits its own rows
instead of mistaking them for duplicates. About 150 bytes per stored image (some
450 MB for LSUN's 3 million). A module of its own so the actor's process starts
light (no config or CLI imports).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.dataset.format import KEY, PIXEL_SHA256, SCHEMA
from pipelines.dataset.reading import REASON


class IngestLedger:
    """Run as one Ray actor: which pixel hashes are stored, which items were dropped and why."""

    def __init__(self):
        self._claimed_by: dict[bytes, int] = {}  # pixel digest -> hash of the key that claimed it
        self._duplicates: set[str] = set()
        self._skipped: dict[str, str] = {}

    def admit(self, keys: list[str], digests: list[bytes], skipped: list[tuple[str, str]] = ()) -> list[bool]:
        """For each item: store it (its pixels are new, or it already claimed them) or drop it.

        ``skipped``: (key, reason) of the block's unusable items, recorded in the same call.
        """
        self._skipped.update(skipped)
        keep = []
        for key, digest in zip(keys, digests):
            owner = self._claimed_by.setdefault(digest, hash(key))
            is_first = owner == hash(key)
            keep.append(is_first)
            if not is_first:
                self._duplicates.add(key)
        return keep

    def processed(self) -> int:
        return len(self._claimed_by) + len(self._duplicates) + len(self._skipped)

    def summary(self) -> dict:
        return {
            "stored": len(self._claimed_by),
            "duplicates": len(self._duplicates),
            "skipped": [{"source": k, "reason": r} for k, r in sorted(self._skipped.items())],
        }


def finish_batch(batch: pa.Table, ledger) -> pa.Table:
    """Decoded rows -> the dataset's rows: record the unusable, drop exact duplicates."""
    import ray

    usable = pc.is_null(batch.column(REASON))
    bad = batch.filter(pc.invert(usable))
    good = batch.filter(usable).select(SCHEMA.names)
    skipped = list(zip(bad.column(KEY).to_pylist(), bad.column(REASON).to_pylist()))
    digests = [bytes.fromhex(h) for h in good.column(PIXEL_SHA256).to_pylist()]
    keep = ray.get(ledger.admit.remote(good.column(KEY).to_pylist(), digests, skipped))
    return good.filter(pa.array(keep, pa.bool_()))
