"""Checked exercises: each chapter's checkers live in `slmbook/exercises/chNN.py`.

A checker takes the reader's answer and returns a `Result`; in a notebook it prints a clear verdict.
An answer left as `None` is "not attempted yet", never an error, so a notebook always runs through.
"""

from __future__ import annotations

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


def verdict(exercise: str, answer, ok: bool, hint: str, success: str = "correct!") -> Result:
    """The common shape of a checker's result: not attempted, correct or wrong with a hint."""
    if answer is None:
        return Result(exercise, "not attempted", f"replace None with your answer. Hint: {hint}")
    if ok:
        return Result(exercise, "correct", success)
    return Result(exercise, "wrong", f"not yet. Hint: {hint}")
