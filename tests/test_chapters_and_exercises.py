import pytest

from slmbook import chapters
from slmbook.data import load_stories
from slmbook.exercises import ch00


def test_fifteen_chapters_numbered_in_order():
    assert [ch.number for ch in chapters.CHAPTERS] == list(range(15))
    assert chapters.chapter("07").notebook == "07_embeddings_rope.ipynb"
    assert chapters.chapter(7) is chapters.chapter("07_embeddings_rope.ipynb")


def test_unknown_chapter_is_a_clear_error():
    with pytest.raises(ValueError, match="notebook='15' is not a chapter"):
        chapters.chapter("15")


def test_package_map_reads_docstrings_without_importing():
    rows = {module: summary for _, module, summary in chapters.package_map()}
    assert rows["slmbook.data"].startswith("TinyStories")


def test_colab_and_binder_links_point_at_the_notebook():
    ch = chapters.chapter(9)
    assert ch.colab_url.endswith("/blob/main/notebooks/09_kv_cache.ipynb")
    assert ch.binder_url.endswith("urlpath=lab/tree/notebooks/09_kv_cache.ipynb")


def test_car_exercise_checks_the_count_of_the_shipped_stories():
    import re

    stories = load_stories("validation", source="sample", verbose=False)
    right = sum("car" in re.findall(r"[a-z]+", s.lower()) for s in stories)  # whole words, by splitting
    assert ch00.check_car_count(right).correct
    assert ch00.check_car_count(right + 1).status == "wrong"
    substring = ch00.check_car_count(sum("car" in s.lower() for s in stories))  # 'scared', 'careful'
    assert substring.status == "wrong" and "whole word" in substring.message
    assert ch00.check_car_count(float(right)).status == "wrong"
    not_yet = ch00.check_car_count(None)
    assert not_yet.status == "not attempted" and "Hint" not in not_yet.message
