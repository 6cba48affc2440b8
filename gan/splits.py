"""The held-out split: which images training never reads, chosen by content hash.

Every image gets a 64-bit *holdout key*: the first 8 bytes of
SHA-256("dcgan-holdout-v1:" + its content hash), read as an unsigned integer. The
key depends only on the image's pixels (through the hash ingest already computes,
``pixel_sha256``), never on file names, order, shard or source, so the same photo
lands on the same side in every re-ingest. The image is held out when its key is
below a cutoff:

- a fraction ``f`` in (0, 1): cutoff = f * 2^64, a rule of the image alone, so a
  distributed ingest decides row by row; the held-out share is ``f`` on average
  (binomial spread: +-sqrt(f(1-f)/N));
- a count ``n`` (an int >= 1): the ``n`` images with the smallest keys, which needs
  the whole list of hashes once (:meth:`Holdout.resolve`); then the cutoff is a
  number and the rule is again per image. Exactly ``n`` are held out (distinct
  hashes; ingest drops exact duplicates). Adding images to a source moves an image
  only from held-out to training, never the other way, for a fraction; for a count
  a few of the largest-key held-out images may give way to new smaller-key ones.

Training reads ``not holdout(h)`` and evaluation ``holdout(h)``: disjoint by
construction. The domain prefix keeps the key independent of any other use of the
same hash (bucketing, sharding).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np

KEY_BITS = 64
KEY_SPACE = 1 << KEY_BITS
_DOMAIN = b"dcgan-holdout-v1:"


def holdout_key(content_hash: str) -> int:
    """The image's 64-bit holdout key (uniform on [0, 2^64) for distinct hashes)."""
    if not isinstance(content_hash, str) or not content_hash:
        raise ValueError(f"a content hash must be a non-empty string, got {content_hash!r}")
    return int.from_bytes(hashlib.sha256(_DOMAIN + content_hash.encode()).digest()[:8], "big")


def holdout_keys(hashes: Iterable[str]) -> np.ndarray:
    """Every hash's holdout key as one uint64 array (8 bytes an image; no list of ints)."""
    return np.fromiter((holdout_key(h) for h in hashes), np.uint64)


def validate_holdout(holdout) -> float | int:
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float, np.integer, np.floating)):
        raise ValueError(f"holdout must be a fraction in (0, 1) or a count >= 0 of images, got {holdout!r}")
    if isinstance(holdout, (int, np.integer)):
        if holdout < 0:
            raise ValueError(f"holdout count must be >= 0, got {holdout}")
        return int(holdout)
    if float(holdout).is_integer() and holdout >= 1:
        raise ValueError(f"holdout {holdout!r} is ambiguous: write {int(holdout)} for a count or a fraction in (0, 1)")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {holdout}")
    return float(holdout)


@dataclass(frozen=True)
class Holdout:
    """A resolved split rule: ``holdout(content_hash)`` is True for held-out images.

    ``spec`` is what was asked (a fraction or a count); ``cutoff`` the key bound
    (held out when ``holdout_key(h) < cutoff``). 0 holds nothing out.
    """

    spec: float | int
    cutoff: int

    @classmethod
    def resolve(cls, holdout: float | int, hashes: Iterable[str] | None = None) -> "Holdout":
        """The rule for a fraction (``hashes`` not needed) or a count (``hashes``: every image's hash)."""
        spec = validate_holdout(holdout)
        if isinstance(spec, float):
            return cls(spec, int(spec * KEY_SPACE))
        if spec == 0:
            return cls(0, 0)
        if hashes is None:
            raise ValueError(f"a holdout count ({spec}) needs every image's content hash: pass hashes=...")
        return cls.from_keys(spec, holdout_keys(hashes))

    @classmethod
    def from_keys(cls, holdout: float | int, keys: np.ndarray) -> "Holdout":
        """:meth:`resolve` from every image's key (:func:`holdout_keys`), held as one array."""
        spec = validate_holdout(holdout)
        if isinstance(spec, float) or spec == 0:
            return cls.resolve(spec)
        keys = np.unique(keys)  # sorted
        if spec >= len(keys):
            raise ValueError(f"holdout count {spec} leaves nothing to train on: the dataset has {len(keys)} distinct images")
        return cls(spec, int(keys[spec]))  # the spec smallest keys are < keys[spec]

    def __call__(self, content_hash: str) -> bool:
        return holdout_key(content_hash) < self.cutoff

    def mask(self, hashes: Iterable[str]) -> np.ndarray:
        """bool array: True where held out."""
        return self.mask_keys(holdout_keys(hashes))

    def mask_keys(self, keys: np.ndarray) -> np.ndarray:
        """bool array from the images' keys: True where held out."""
        if self.cutoff >= KEY_SPACE:
            return np.ones(len(keys), bool)
        return np.asarray(keys, np.uint64) < np.uint64(self.cutoff)

    def to_manifest(self) -> dict:
        """What the manifest records so every later step applies the same rule."""
        return {"spec": self.spec, "cutoff": str(self.cutoff), "key": "sha256('dcgan-holdout-v1:' + pixel_sha256)[:8]"}

    @classmethod
    def from_manifest(cls, entry: dict) -> "Holdout":
        return cls(entry["spec"], int(entry["cutoff"]))


def is_heldout(content_hash: str, holdout: float | int | Holdout, hashes: Iterable[str] | None = None) -> bool:
    """Whether the image with this content hash is held out.

    ``holdout``: a fraction in (0, 1), a count (then ``hashes``, the whole list, is
    required; resolve once with :meth:`Holdout.resolve` when splitting many), or a
    resolved :class:`Holdout`.
    """
    rule = holdout if isinstance(holdout, Holdout) else Holdout.resolve(holdout, hashes)
    return rule(content_hash)


def split(hashes: list[str], holdout: float | int) -> tuple[list[int], list[int]]:
    """(training indices, held-out indices) of ``hashes``, in their order."""
    mask = Holdout.resolve(holdout, hashes).mask(hashes)
    return np.flatnonzero(~mask).tolist(), np.flatnonzero(mask).tolist()
