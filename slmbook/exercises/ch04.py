"""Chapter 4's exercises: a compute budget split by the rule of thumb, what a name swap does to the
shingles of a real story, and a boilerplate filter written by the reader.

None of the answers is printed in the chapter: the budget, the story, the shingle length and the
filter are ones the chapter does not use itself. A hint appears only after a wrong try.
"""

from __future__ import annotations

import functools
import math
from collections import Counter

import numpy as np

from slmbook.exercises import Result, close, not_attempted, verdict
from slmbook.scaling import TOKENS_PER_PARAMETER

GPU_FLOPS = 400e12  # an assumed round number: a GPU sustaining 400 TFLOP/s
BUDGET_HOURS = 1.0
SWAP_STORY, SWAP_OLD, SWAP_NEW, SWAP_SHINGLE_WORDS = 1, "Roxy", "Mia", 3


def budget_parameters(flops: float = GPU_FLOPS * BUDGET_HOURS * 3600) -> float:
    """N with C = 6·N·D and D = 20·N, i.e. C = 120·N²."""
    return math.sqrt(flops / (6 * TOKENS_PER_PARAMETER))


def check_budget_parameters(answer) -> Result:
    """One hour on a GPU sustaining 400 TFLOP/s: how many parameters should the model have to be
    compute-optimal by the 20-tokens-per-parameter rule (C = 6·N·D)? Within 1%."""
    name = "chapter 4: a model for one GPU-hour"
    if answer is None:
        return not_attempted(name)
    from slmbook.config import BOOK
    from slmbook.scaling import count_parameters

    expected = budget_parameters()
    book = count_parameters(BOOK) / expected
    return verdict(name, answer, close(answer, expected, rel=0.01),
                   hint="the budget is C = 400e12 FLOP/s * 3600 s; put D = 20 * N into C = 6 * N * D and solve "
                        "for N (the answer is a number of parameters, not of tokens)",
                   success=f"correct! {expected / 1e6:.0f}M parameters on {20 * expected / 1e9:.1f}B tokens; "
                           f"the BOOK model has {book:.0%} of that")


@functools.lru_cache(maxsize=1)
def swapped_story_jaccard() -> float:
    """Exact Jaccard similarity of the word 3-gram sets of validation story 1 and its copy with
    'Roxy' replaced by 'Mia' everywhere."""
    from slmbook.curation import jaccard, shingles, swap_name
    from slmbook.data import load_stories

    story = load_stories("validation", source="sample", verbose=False)[SWAP_STORY]
    copy = swap_name(story, SWAP_OLD, SWAP_NEW)
    return jaccard(shingles(story, SWAP_SHINGLE_WORDS), shingles(copy, SWAP_SHINGLE_WORDS))


def check_name_swap_jaccard(answer) -> Result:
    """Swap 'Roxy' for 'Mia' in validation story 1 of the shipped sample: what is the exact Jaccard
    similarity of the two versions' word 3-gram sets (`shingles(story, n=3)`)? Within 0.001."""
    name = "chapter 4: a name swap seen through 3-gram shingles"
    if answer is None:
        return not_attempted(name)
    expected = swapped_story_jaccard()
    return verdict(name, answer, close(answer, expected, rel=0, abs_tol=1e-3),
                   hint="story = load_stories('validation', source='sample')[1]; copy = swap_name(story, 'Roxy', "
                        "'Mia'); compare shingles(story, n=3) with shingles(copy, n=3) using jaccard (n=3, not "
                        "the chapter's 5)",
                   success=f"correct! {expected:.3f}: shorter shingles lose fewer n-grams per changed word "
                           "(3 instead of 5 per mention), so the copy looks closer than with 5-grams")


def _remove_repeated_lines(stories: list[str], min_stories: int) -> list[str]:
    seen_in = Counter(line for story in stories for line in set(story.split("\n")) if line)
    return ["\n".join(line for line in story.split("\n") if not line or seen_in[line] < min_stories)
            for story in stories]


def _random_corpus(rng: np.random.Generator) -> tuple[list[str], int]:
    """Stories made of real lines of validation stories, some lines pasted into many of them."""
    from slmbook.data import load_stories

    lines = [line for story in load_stories("validation", source="sample", verbose=False)[:200]
             for line in story.split("\n") if line]
    footers = [lines[i] for i in rng.choice(len(lines), 3, replace=False)]
    corpus = []
    for _ in range(int(rng.integers(5, 12))):
        story = [lines[i] for i in rng.choice(len(lines), int(rng.integers(1, 6)))]
        for footer in footers:
            if rng.random() < 0.4:
                story.insert(int(rng.integers(0, len(story) + 1)), footer)
        if rng.random() < 0.3:
            story.insert(1, "")  # an empty line is never boilerplate
        if rng.random() < 0.2:
            story.append(story[0])  # a line twice in one story still counts as one story
        corpus.append("\n".join(story))
    return corpus, int(rng.integers(2, 4))


def check_remove_repeated_lines(fn) -> Result:
    """Write fn(stories, min_stories) -> stories: drop every non-empty line (text between '\\n's)
    that occurs in at least `min_stories` different stories; keep the other lines, empty ones
    included, in order, joined by '\\n'. Checked on fresh random corpora of real lines."""
    name = "chapter 4: a boilerplate filter"
    if fn is None:
        return not_attempted(name)
    hint = ("count each line once per story that contains it (a Counter over set(story.split('\\n'))), then "
            "rebuild each story from its lines whose count is below min_stories, keeping empty lines")
    rng = np.random.default_rng()
    for _ in range(20):
        corpus, min_stories = _random_corpus(rng)
        expected = _remove_repeated_lines(corpus, min_stories)
        try:
            got = fn(list(corpus), min_stories)
        except Exception as error:  # the reader's code: report, never crash the notebook
            return Result(name, "wrong", f"your function raised {type(error).__name__}: {error}")
        if list(got) != expected:
            return verdict(name, fn, False, hint=f"{hint} (it failed for min_stories={min_stories} on "
                                                 f"{len(corpus)} stories)")
    return verdict(name, fn, True, hint=hint,
                   success="correct: the line-level deduplication that CCNet (Wenzek et al., 2020) runs on Common "
                           "Crawl to strip menus and cookie notices out of web pages")
