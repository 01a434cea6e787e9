"""Curation tools on real TinyStories text, checked against Python's own codecs and brute force."""

from __future__ import annotations

import itertools
import zlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from slmbook.curation import (
    MinHasher,
    QualityThresholds,
    add_noise,
    character_names,
    curate,
    curl_quotes,
    damage_mojibake,
    drop_sentence,
    estimated_jaccard,
    exact_dedup,
    find_mojibake,
    jaccard,
    lsh_bands,
    lsh_candidate_probability,
    lsh_candidates,
    near_duplicates,
    nearest_similarity,
    non_printable_ratio,
    normalize,
    quality_filters,
    repair_mojibake,
    repetition_ratio,
    sentences,
    shingles,
    story_hash,
    swap_name,
    truncate,
    word_count,
)


def damage(text: str) -> str:
    """How the mojibake arose: UTF-8 bytes read as Windows-1252, its undefined bytes dropped."""
    return text.encode("utf-8").decode("cp1252", errors="ignore")


# --- mojibake -------------------------------------------------------------------------------


def test_repair_inverts_the_damage_on_the_real_damaged_stories(valid):
    damaged = [s for s in valid if "â€" in s]
    assert len(damaged) == 51  # the data README: 51 of the 1,000 validation stories
    for story in damaged:
        fixed, counts = repair_mojibake(story)
        assert "â€" not in fixed and counts["mojibake"] + counts["mojibake lost byte"] == story.count("â€")
        assert damage(fixed) == story  # Python's cp1252 codec takes the repair back to the original bytes


def test_no_false_repairs_on_clean_real_stories(train, valid):
    clean = train + [s for s in valid if "â€" not in s]
    assert any("“" in s or "’" in s for s in train)  # real curly quotes and dashes are in there
    for story in clean:
        assert repair_mojibake(story) == (story, {})


@pytest.mark.parametrize("text", ["café naïve", "groß”", "«CAFÉ»", "Ñandú", "ÀÁÂ œuvre", "2 × 3 ± 1"])
def test_legitimate_accents_are_left_alone(text):
    assert repair_mojibake(text)[0] == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab .\n\"'“”‘’–—…éüñçÉ€™🙂日"), max_size=40))
def test_repair_undoes_damage_of_arbitrary_text(text):
    assume(damage(text) != text)
    assert repair_mojibake(damage(text))[0] == text


def test_find_and_normalize_count_what_changed():
    text = "â€œHi!â€ she said.\r\nIt was Ã©tÃ©."
    assert find_mojibake(text) == [("â€œ", "“"), ("â€", "”"), ("Ã©", "é"), ("Ã©", "é")]
    fixed, counts = normalize(text)
    assert fixed == "“Hi!” she said.\nIt was été."
    assert counts == {"mojibake": 3, "mojibake lost byte": 1, "line endings": 1}
    decomposed = "cafe\u0301"
    assert normalize(decomposed) == ("café", {"unicode NFC": 1})


# --- exact and near duplicates --------------------------------------------------------------


def test_exact_dedup_keeps_first_copy(valid):
    stories = valid[:20] + [valid[3], valid[7].replace("\n", "\n\n"), valid[0] + "  "]
    kept, removed = exact_dedup(stories)
    assert kept == valid[:20]
    assert removed == [20, 21, 22]


def test_shingles_and_jaccard():
    assert len(shingles("One two three four five six", n=5)) == 2
    assert shingles("a b", n=5) == shingles("A  B", n=5)
    a, b = {1, 2, 3, 4}, {3, 4, 5}
    assert jaccard(a, b) == pytest.approx(2 / 5)


def test_minhash_estimates_jaccard_on_real_story_pairs(valid):
    hasher = MinHasher(num_perm=256, seed=1)
    sets = [shingles(s, 2) for s in valid[:12]]
    sigs = hasher.signatures(sets)
    for i, j in itertools.combinations(range(12), 2):
        exact = jaccard(sets[i], sets[j])
        sigma = max(np.sqrt(exact * (1 - exact) / 256), 0.01)
        assert abs(estimated_jaccard(sigs[i], sigs[j]) - exact) < 5 * sigma
    assert np.array_equal(sigs, MinHasher(num_perm=256, seed=1).signatures(sets))


def test_lsh_candidate_rate_follows_the_s_curve():
    # shingles are CRC-32 hashes: sets of such values with Jaccard similarity exactly 60 / 100
    values = [zlib.crc32(f"shingle {i}".encode()) for i in range(100)]
    a, b = set(values[:80]), set(values[20:])
    assert jaccard(a, b) == 0.6
    bands, rows = 8, 4
    trials = 400
    hits = 0
    for seed in range(trials):
        sigs = MinHasher(bands * rows, seed=seed).signatures([a, b])
        hits += (0, 1) in lsh_candidates(sigs, bands, rows)
    p = lsh_candidate_probability(0.6, bands, rows)
    assert abs(hits / trials - p) < 4 * np.sqrt(p * (1 - p) / trials)


def test_lsh_bands_put_the_threshold_near_the_s_curve_midpoint():
    bands, rows = lsh_bands(128, 0.8)
    assert bands * rows <= 128
    assert abs((1 / bands) ** (1 / rows) - 0.8) < 0.05
    # pairs well above the threshold are almost never missed, pairs well below rarely proposed
    assert lsh_candidate_probability(0.9, bands, rows) > 0.99
    assert lsh_candidate_probability(0.6, bands, rows) < 0.1


def test_near_duplicates_finds_every_pair_brute_force_finds(valid):
    # real stories, plus copies with one sentence dropped (a typical near-duplicate)
    base = valid[100:160]
    edited = [s.replace(s.split(". ")[1] + ". ", "", 1) for s in base[:15] if s.count(". ") > 3]
    stories = base + edited
    threshold = 0.7
    sets = [shingles(s) for s in stories]
    truth = {(i, j) for i, j in itertools.combinations(range(len(stories)), 2) if jaccard(sets[i], sets[j]) >= threshold}
    assert len(truth) >= 10
    found = near_duplicates(stories, threshold=threshold, num_perm=128, seed=0)
    assert {(i, j) for i, j, _ in found.pairs} == truth
    assert all(sim == pytest.approx(jaccard(sets[i], sets[j])) for i, j, sim in found.pairs)
    assert len(found.to_remove) == len(truth)  # each edited copy joins its original's cluster


# --- quality filters and the pipeline -------------------------------------------------------


def test_filter_statistics():
    assert repetition_ratio("a b c a b c") == pytest.approx(1 - 3 / 4)
    assert repetition_ratio("one two") == 0.0
    assert non_printable_ratio("ab\x00\u200b\n") == pytest.approx(2 / 5)
    assert word_count("Hello, world! It's 3 o'clock.") == 7


def test_quality_filters_report_each_filter(valid):
    stories = [valid[0], "Too short.", "yum " * 50, valid[1] + "\x07" * 100]
    kept, rejected = quality_filters(stories, QualityThresholds(min_words=20))
    assert kept == [valid[0]]
    assert rejected == {"too short": [1], "too long": [], "repetitive": [2], "non-printable": [3]}


def test_curate_counts_add_up(valid, train):
    stories = valid[:300] + train[:200] + valid[:5]
    kept, report = curate(stories, near_threshold=0.8)
    assert report.stories_in == 505
    assert report.exact_duplicates == 5
    assert report.stories_out == len(kept) == 505 - 5 - report.near_duplicates - report.quality_removed
    assert report.stories_normalized == sum(1 for s in valid[:300] if "â€" in s)
    assert not any("â€" in s for s in kept)
    assert [n for _, n in report.table()][-1] == len(kept)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="threshold"):
        lsh_bands(128, 1.5)
    with pytest.raises(ValueError, match="num_perm"):
        MinHasher(0)
    with pytest.raises(ValueError, match="n="):
        shingles("abc", 0)
    with pytest.raises(TypeError, match="text"):
        normalize(b"bytes")


def test_nearest_similarity_equals_the_all_pairs_loop():
    from slmbook.data import load_stories

    stories = load_stories("validation", source="sample", verbose=False)[:70]
    stories.append(stories[3] + " The end.")  # one near copy
    signatures = MinHasher(64, seed=0).signatures([shingles(s) for s in stories])
    expected = [max(estimated_jaccard(signatures[i], signatures[j]) for j in range(len(stories)) if j != i)
                for i in range(len(stories))]
    got = nearest_similarity(signatures, block=16)  # several blocks, the last one partial
    assert got.tolist() == pytest.approx(expected)
    assert got[3] > 0.5 and got[-1] == got[3]


# --- edited copies and noise ------------------------------------------------------------------


def test_damage_mojibake_gives_the_real_damaged_stories_back(valid):
    damaged = [s for s in valid if "â€" in s]
    for story in damaged:
        assert damage_mojibake(repair_mojibake(story)[0]) == story  # the official file, byte for byte
    assert damage_mojibake("plain ASCII") == "plain ASCII"


def test_sentences_cover_the_text_and_drop_sentence_removes_one(valid):
    text = 'Tom said, "Hi!" It\'s fun. She ran. "Go?" he asked.\nThe end.'
    assert [text[a:b] for a, b in sentences(text)] == ['Tom said, "Hi!"', "It's fun.", "She ran.",
                                                       '"Go?" he asked.', "The end."]
    assert drop_sentence(text, 2) == 'Tom said, "Hi!" It\'s fun. "Go?" he asked.\nThe end.'
    assert drop_sentence(text, -1) == 'Tom said, "Hi!" It\'s fun. She ran. "Go?" he asked.'
    assert drop_sentence(text, 0) == 'It\'s fun. She ran. "Go?" he asked.\nThe end.'
    for story in valid[:50]:
        spans = sentences(story)
        assert "".join(story[a:b] for a, b in spans).replace(" ", "").replace("\n", "") == \
            story.replace(" ", "").replace("\n", "")  # nothing but whitespace lies between sentences
        shorter = drop_sentence(story, len(spans) // 2)
        assert len(sentences(shorter)) == len(spans) - 1
    with pytest.raises(ValueError, match="index=5: the text has 5 sentences"):
        drop_sentence(text, 5)


def test_names_swap_and_quotes():
    story = 'One day, Lily met Tom. "Hi, Tom!" said Lily. Lily\'s mom smiled. Tomato soup.'
    assert character_names(story) == {"Lily": 2, "Tom": 2}  # not "Lily's" and "Tomato" at sentence starts
    assert swap_name(story, "Tom", "Max") == \
        'One day, Lily met Max. "Hi, Max!" said Lily. Lily\'s mom smiled. Tomato soup.'
    with pytest.raises(ValueError, match="old='Sue'"):
        swap_name(story, "Sue", "Max")
    curled = curl_quotes(story)
    assert curled == 'One day, Lily met Tom. “Hi, Tom!” said Lily. Lily’s mom smiled. Tomato soup.'
    assert curled.replace("“", '"').replace("”", '"').replace("’", "'") == story
    assert curl_quotes("'Yes,' she said.") == "‘Yes,’ she said."


def test_curled_and_reflowed_copies_have_the_same_shingles(valid):
    for story in valid[:30]:
        assert shingles(curl_quotes(story)) == shingles(story)  # shingles read words, not punctuation
        assert story_hash(" ".join(story.split())) == story_hash(story)


def test_add_noise_counts_what_it_changed(train):
    stories = train[:400]
    footer = stories[0].splitlines()[0]
    noisy, counts = add_noise(stories, truncate_rate=0.5, duplicate_rate=0.1, copies=3, boilerplate=footer,
                              boilerplate_rate=0.25, seed=1)
    assert len(noisy) == len(stories) + counts["duplicates"]
    first = noisy[: len(stories)]  # the first copy of every story keeps its place
    assert counts["boilerplate"] == sum(n.endswith("\n\n" + footer) for n in first)
    assert counts["mojibake"] == sum(damage_mojibake(s) != s for s in stories) > 0
    shortened = sum(len(n.removesuffix("\n\n" + footer)) < len(damage_mojibake(s)) for n, s in zip(first, stories, strict=True))
    assert shortened <= counts["truncated"] and 0.4 < counts["truncated"] / len(stories) < 0.6
    assert 0.15 < counts["boilerplate"] / len(stories) < 0.35
    extra = Counter(noisy[len(stories):])
    assert counts["duplicates"] == 2 * len(extra) and all(first.count(text) >= 1 and k % 2 == 0
                                                          for text, k in extra.items())
    assert add_noise(stories, mojibake=False, truncate_rate=0, duplicate_rate=0) == (list(stories), {})
    with pytest.raises(ValueError, match="truncate_rate=2"):
        add_noise(stories, truncate_rate=2)
    with pytest.raises(ValueError, match="copies=0"):
        add_noise(stories, copies=0)
    with pytest.raises(ValueError, match="needs a boilerplate"):
        add_noise(stories, boilerplate_rate=0.5)


def test_truncate():
    assert truncate("abcdefghij", 0.5) == "abcde"
    assert truncate("ab cd", 0.6) == "ab"
    with pytest.raises(ValueError, match="fraction=0"):
        truncate("abc", 0)
