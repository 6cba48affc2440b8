"""Lists of seeds or sample ids typed as ranges: ``0-35,40`` (StyleGAN2-ADA's ``--seeds``)."""

from __future__ import annotations

import re

from pipelines.errors import PipelineError


class RangeError(PipelineError, ValueError):
    """A list of ids that does not parse; the message shows the form to use."""


def parse_ranges(spec: str, noun: str = "seed", error: type[Exception] = RangeError) -> list[int]:
    """'3,17,40-43' -> [3, 17, 40, 41, 42, 43], in the order given (repeats kept)."""
    ids: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise error(f"'{part}' in '{spec}' is not a {noun} or range: use e.g. 3,17,40-43")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise error(f"range '{part}' runs backwards: write {hi}-{lo}")
        ids.extend(range(lo, hi + 1))
    if not ids:
        raise error(f"no {noun}s in '{spec}': use e.g. 3,17,40-43")
    return ids
