"""Chapter 0's exercise: find your way around the shipped data with `slmbook.data`."""

from __future__ import annotations

import re

from slmbook.data import load_stories
from slmbook.exercises import Result, verdict


def count_stories_with(word: str) -> int:
    """Validation stories (shipped sample) in which `word` occurs as a whole word, any case."""
    pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
    return sum(bool(pattern.search(s)) for s in load_stories("validation", source="sample", verbose=False))


def check_dragon_count(answer) -> Result:
    """How many of the 1,000 validation stories mention a dragon (the word 'dragon', any case)?"""
    return verdict("chapter 0: stories with a dragon", answer,
                   ok=answer == count_stories_with("dragon"),
                   hint="load_stories('validation') and a whole-word, case-insensitive test per story "
                        "(re.search(r'\\bdragon\\b', story, re.IGNORECASE))")
