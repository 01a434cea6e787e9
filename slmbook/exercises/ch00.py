"""Chapter 0's exercise: find your way around the shipped data with `slmbook.data`.

The count is over the shipped sample's validation stories, which are the same on every machine:
`load_stories("validation")` returns the hub's whole split when the hub answers, so a checker that
counted "the validation stories" would have two right answers.
"""

from __future__ import annotations

import re

from slmbook.data import load_stories
from slmbook.exercises import Result, exact_int, not_attempted, verdict

WORD = "car"


def sample_validation() -> list[str]:
    """The validation stories shipped with the package (never the hub's split)."""
    return load_stories("validation", source="sample", verbose=False)


def count_stories_with(word: str, stories: list[str] | None = None) -> int:
    """Stories in which `word` occurs as a whole word, any case (default: the shipped validation sample)."""
    pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
    return sum(bool(pattern.search(s)) for s in (sample_validation() if stories is None else stories))


def check_car_count(answer) -> Result:
    """In how many of the shipped validation stories does the whole word 'car' appear (any case)?"""
    name = f"chapter 0: stories with a {WORD}"
    if answer is None:
        return not_attempted(name)
    stories = sample_validation()
    expected = count_stories_with(WORD, stories)
    if isinstance(answer, int) and answer != expected:
        # the usual slips, each told apart from the right count by what it counted instead
        substring = sum(WORD in s.lower() for s in stories)
        occurrences = sum(len(re.findall(rf"\b{WORD}\b", s, re.IGNORECASE)) for s in stories)
        plural = sum(bool(re.search(rf"\b{WORD}s?\b", s, re.IGNORECASE)) for s in stories)
        for wrong, why in ((substring, f"that counts '{WORD}' inside other words too ('scared', 'careful'): "
                                       "match the whole word only"),
                           (occurrences, "that counts every occurrence; count each story once"),
                           (plural, f"that counts '{WORD}s' too; the whole word is '{WORD}' alone")):
            if answer == wrong:
                return Result(name, "wrong", why)
    return verdict(name, answer, exact_int(answer, expected),
                   hint="a story counts once however often it says the word; a regular expression marks word "
                        r"edges with \b and ignores case with re.IGNORECASE; and the stories must be the "
                        "shipped sample's (source='sample')",
                   success=f"correct: {expected} of the {len(stories):,} shipped validation stories")
