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

from pipelines.dataset_format import IMAGE, KEY, SCHEMA, pixel_sha256
from pipelines.sources import REASON


class IngestLedger:
    """Run as one Ray actor: which pixel hashes are stored, which items were dropped and why."""

    def __init__(self):
        self._claimed_by: dict[bytes, int] = {}  # pixel digest -> hash of the key that claimed it
        self._duplicates: set[str] = set()
        self._skipped: dict[str, str] = {}

    def admit(self, keys: list[str], digests: list[bytes]) -> list[bool]:
        """For each item: store it (its pixels are new, or it already claimed them) or drop it."""
        keep = []
        for key, digest in zip(keys, digests):
            owner = self._claimed_by.setdefault(digest, hash(key))
            is_first = owner == hash(key)
            keep.append(is_first)
            if not is_first:
                self._duplicates.add(key)
        return keep

    def skip(self, items: list[tuple[str, str]]) -> None:
        self._skipped.update(items)

    def processed(self) -> int:
        return len(self._claimed_by) + len(self._duplicates) + len(self._skipped)

    def summary(self) -> dict:
        return {
            "stored": len(self._claimed_by),
            "duplicates": len(self._duplicates),
            "skipped": [{"source": k, "reason": r} for k, r in sorted(self._skipped.items())],
        }


def finish_batch(batch: pa.Table, ledger) -> pa.Table:
    """Decoded rows -> the dataset's rows: hash, record the unusable, drop exact duplicates."""
    import ray

    usable = pc.is_null(batch.column(REASON)).to_pylist()
    keys = batch.column(KEY).to_pylist()
    reasons = batch.column(REASON).to_pylist()
    skipped = [(k, r) for k, r, ok in zip(keys, reasons, usable) if not ok]
    good = batch.filter(pa.array(usable, pa.bool_()))
    images = good.column(IMAGE).to_pylist()
    hashes = [pixel_sha256(img) for img in images]
    keep = ray.get(ledger.admit.remote(good.column(KEY).to_pylist(), [bytes.fromhex(h) for h in hashes])) if hashes else []
    if skipped:
        ray.get(ledger.skip.remote(skipped))
    rows = pa.Table.from_arrays([good.column(KEY), good.column(IMAGE), pa.array(hashes, pa.string())], schema=SCHEMA)
    return rows.filter(pa.array(keep, pa.bool_()))
