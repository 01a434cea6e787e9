"""Checked exercises: each chapter's checkers live in `slmbook/exercises/chNN.py`.

A checker takes the reader's answer and returns a `Result`; in a notebook it prints a clear verdict.
An answer left as `None` is "not attempted yet", never an error, so a notebook always runs through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    exercise: str
    status: str  # "correct", "wrong" or "not attempted"
    message: str

    @property
    def correct(self) -> bool:
        return self.status == "correct"

    def __repr__(self) -> str:
        mark = {"correct": "✅", "wrong": "❌", "not attempted": "✏️"}[self.status]
        return f"{mark} {self.exercise}: {self.message}"


def not_attempted(exercise: str) -> Result:
    """The result for an answer still None, with no hint: the first try is the reader's own, and a
    checker shows its hint only after a wrong one."""
    return Result(exercise, "not attempted", "replace None with your answer; a hint appears after a wrong try")


def verdict(exercise: str, answer, ok: bool, hint: str, success: str = "correct!") -> Result:
    """The common shape of a checker's result: not attempted, correct or wrong with a hint."""
    if answer is None:
        return Result(exercise, "not attempted", f"replace None with your answer. Hint: {hint}")
    if ok:
        return Result(exercise, "correct", success)
    return Result(exercise, "wrong", f"not yet. Hint: {hint}")


def close(answer, expected: float, rel: float, abs_tol: float = 0.0) -> bool:
    """A numeric answer (anything float() reads) within `rel` (relative) or `abs_tol` of `expected`."""
    try:
        return math.isclose(float(answer), expected, rel_tol=rel, abs_tol=abs_tol)
    except (TypeError, ValueError):
        return False


def exact_int(answer, expected: int) -> bool:
    """An integer answer (not a bool, not a float that happens to be whole) equal to `expected`."""
    return isinstance(answer, int) and not isinstance(answer, bool) and answer == expected
