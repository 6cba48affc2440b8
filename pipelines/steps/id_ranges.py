"""Lists of seeds or sample ids typed as ranges: ``0-35,40`` (StyleGAN2-ADA's ``--seeds``), and
sums of such groups: ``2,7,11 - 4,9,13 + 5,6,8`` (``dcgan latent arithmetic``)."""

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


def parse_expression(expr: str) -> list[tuple[int, list[int]]]:
    """'2,7,11 - 4,9,13 + 5,6,8' -> [(+1, [2,7,11]), (-1, [4,9,13]), (+1, [5,6,8])].
    Operators stand alone between spaces (a range like 4-9 is part of an operand)."""
    tokens = expr.split()
    if not tokens:
        raise RangeError("empty expression: write e.g. '2,7,11 - 4,9,13 + 5,6,8'")
    terms, sign, expect_operand = [], 1, True
    for tok in tokens:
        if tok in "+-" and len(tok) == 1:
            if expect_operand:
                raise RangeError(f"'{expr}': two operators in a row; put spaces around + and - only between operands")
            sign, expect_operand = (1 if tok == "+" else -1), True
        else:
            if not expect_operand:
                raise RangeError(f"'{expr}': missing + or - before '{tok}' (operators need spaces around them)")
            terms.append((sign, parse_ranges(tok, "sample id")))
            expect_operand = False
    if expect_operand:
        raise RangeError(f"'{expr}' ends with an operator")
    return terms
