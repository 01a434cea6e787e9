"""Chapters 4-6 exercise checkers: right answers (computed independently here) pass, wrong ones fail."""

import collections
import json
import math
import re
from pathlib import Path

import pytest
import regex

from slmbook import scaling
from slmbook.data import load_stories
from slmbook.exercises import ch04, ch05, ch06
from slmbook.tokenizer import GPT2_PATTERN, gpt2_encoding

NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?"
                    r"(?:\s?(%|k|M|B|million|billion)\b|%)?")
SCALE = {"%": 0.01, "k": 1e3, "M": 1e6, "million": 1e6, "B": 1e9, "billion": 1e9}


def printed_numbers(notebook: str) -> set[float]:
    """Every number in the stored outputs of a chapter notebook, as printed and scaled by its unit."""
    nb = json.loads((Path(__file__).parents[1] / "notebooks" / notebook).read_text())
    texts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            texts.append("".join(out.get("text", "")))
            texts += ["".join(v) for k, v in out.get("data", {}).items() if k.startswith("text/")]
    values = set()
    for match in NUMBER.finditer("\n".join(texts)):
        number = match.group().rstrip("%kMBmilonb ").replace(",", "")
        value = float(number)
        values |= {value, value * SCALE.get(match.group(1) or ("%" if match.group().endswith("%") else ""), 1)}
    return values


def assert_no_printed_answer(notebook: str, checkers) -> None:
    numbers = printed_numbers(notebook)
    assert len(numbers) > 20  # the notebook has stored outputs to search
    for check in checkers:
        passing = [x for x in numbers if check(x).correct]
        assert passing == [], f"{check.__name__} accepts numbers printed in {notebook}: {passing[:5]}"


# --- chapter 4 --------------------------------------------------------------------------------

def word_grams(text: str, n: int) -> set[tuple[str, ...]]:
    words = regex.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def remove_repeated_lines_by_hand(stories, min_stories):
    out = []
    for story in stories:
        lines = story.split("\n")
        keep = [line for line in lines
                if line == "" or sum(line in other.split("\n") for other in stories) < min_stories]
        out.append("\n".join(keep))
    return out


def test_ch04_budget():
    n = math.sqrt(400e12 * 3600 / 120)  # C = 6 N (20 N)
    assert ch04.check_budget_parameters(n).correct
    assert ch04.check_budget_parameters(round(n * 1.005)).correct  # within 1%
    assert ch04.check_budget_parameters(20 * n).status == "wrong"  # tokens, not parameters
    assert ch04.check_budget_parameters(math.sqrt(400e12 / 120)).status == "wrong"  # one second, not one hour
    assert ch04.check_budget_parameters(scaling.chinchilla_optimal(400e12 * 3600)[0]).status == "wrong"  # the fit
    assert ch04.check_budget_parameters("many").status == "wrong"


def test_ch04_name_swap():
    story = load_stories("validation", source="sample", verbose=False)[1]
    copy = regex.sub(r"\bRoxy\b", "Mia", story)
    a, b = word_grams(story, 3), word_grams(copy, 3)
    expected = len(a & b) / len(a | b)
    assert ch04.check_name_swap_jaccard(expected).correct
    five_a, five_b = word_grams(story, 5), word_grams(copy, 5)
    assert ch04.check_name_swap_jaccard(len(five_a & five_b) / len(five_a | five_b)).status == "wrong"  # 5-grams
    assert ch04.check_name_swap_jaccard(1 - expected).status == "wrong"


def test_ch04_boilerplate_filter():
    assert ch04.check_remove_repeated_lines(remove_repeated_lines_by_hand).correct
    def drop_empty_lines(stories, k):
        return [s.replace("\n\n", "\n") for s in remove_repeated_lines_by_hand(stories, k)]

    assert not ch04.check_remove_repeated_lines(drop_empty_lines).correct  # empty lines must stay
    off_by_one = lambda stories, k: remove_repeated_lines_by_hand(stories, k + 1)  # noqa: E731
    assert not ch04.check_remove_repeated_lines(off_by_one).correct
    assert not ch04.check_remove_repeated_lines(lambda stories, k: stories).correct
    crashed = ch04.check_remove_repeated_lines(lambda stories, k: 1 / 0)
    assert crashed.status == "wrong" and "ZeroDivisionError" in crashed.message


@pytest.mark.parametrize("check", [ch04.check_budget_parameters, ch04.check_name_swap_jaccard,
                                   ch04.check_remove_repeated_lines, ch05.check_perplexity, ch05.check_named_lily])
def test_ch04_ch05_hint_only_after_a_wrong_try(check):
    first = check(None)
    assert first.status == "not attempted" and "Hint" not in first.message
    assert "Hint" in check("wrong").message or "raised" in check("wrong").message


def test_ch04_answers_are_not_printed_in_the_chapter():
    assert_no_printed_answer("04_data.ipynb", [ch04.check_budget_parameters, ch04.check_name_swap_jaccard])


# --- chapter 5 --------------------------------------------------------------------------------

def test_ch05():
    probs = (0.5, 0.25, 0.125, 0.5)
    assert ch05.check_perplexity(2 ** ((1 + 2 + 3 + 1) / 4)).correct
    assert ch05.check_perplexity(sum(1 / p for p in probs) / 4).status == "wrong"  # mean of 1/p is not it
    assert ch05.check_perplexity(None).status == "not attempted"
    enc = gpt2_encoding()
    named, lily = enc.encode_single_token(" named"), enc.encode_single_token(" Lily")
    counts = collections.Counter()
    for story in load_stories("validation", source="sample", verbose=False):
        ids = enc.encode_ordinary(story)
        counts.update(b for a, b in zip(ids, ids[1:], strict=False) if a == named)
    p = counts[lily] / sum(counts.values())
    assert 0 < p < 1
    assert ch05.check_named_lily(p).correct
    assert ch05.check_named_lily(counts[lily]).status == "wrong"


def test_ch05_answers_are_not_printed_in_the_chapter():
    assert_no_printed_answer("05_language_models.ipynb", [ch05.check_perplexity, ch05.check_named_lily])


def test_ch06():
    pairs = collections.Counter()
    for story in load_stories("validation", source="sample", verbose=False)[:200]:
        for piece in regex.findall(GPT2_PATTERN, story):
            b = piece.encode("utf-8")
            pairs.update(zip(b, b[1:], strict=False))
    (best, count), (_, second) = pairs.most_common(2)
    assert ch06.first_merge()[0] == bytes(best)
    assert ch06.check_first_merge_count(count).correct
    assert ch06.check_first_merge_count(second).status == "wrong"
    assert ch06.check_first_merge_count(count + 1).status == "wrong"
    assert ch06.check_first_merge_count(None).status == "not attempted"
    assert ch06.check_bits_per_byte(1500 / math.log(2) / 4000).correct
    assert ch06.check_bits_per_byte(1500 / 4000).status == "wrong"  # nats, not bits
    assert ch06.check_bits_per_byte(1.5 / math.log(2)).status == "wrong"  # bits per token


def test_ch06_single_token_numbers():
    enc = gpt2_encoding()
    vocab_numbers = sum(1 for n in range(10_000) if str(n).encode() in enc._mergeable_ranks)  # counted another way
    assert ch06.check_single_token_numbers(vocab_numbers).correct
    assert ch06.check_single_token_numbers(vocab_numbers - 88).status == "wrong"
    assert ch06.check_single_token_numbers(float(vocab_numbers)).status == "wrong"  # an int, as asked
    assert ch06.check_single_token_numbers(None).status == "not attempted"
    assert "Hint" not in ch06.check_single_token_numbers(None).message  # hints only after a wrong try
    assert "Hint" in ch06.check_single_token_numbers(1).message


def test_ch06_answers_are_not_printed_in_the_chapter():
    assert_no_printed_answer("06_tokenizers.ipynb", [ch06.check_bits_per_byte, ch06.check_single_token_numbers])
