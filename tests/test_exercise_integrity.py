"""No exercise's answer is on screen: every checker of every chapter is tried with what the chapter's
stored notebook shows, and none may accept it.

For each chapter module `slmbook.exercises.chNN`, every public `check_*` function defined there is found
by inspection (a new exercise is covered without editing this file) and fed what the stored outputs of
chapter NN's notebook show (stream text, text/plain, text/markdown, text/html, error text; not the
markdown cells' own prose, which is not an output):

* a checker of a value (its parameter is `answer`): every printed number, as printed and scaled by its
  unit (1,234 / 1.5e-3 / 12% / 50.9M / 1.02B / 3.50 GiB), as an int when it is whole and as a float;
  every run of consecutive numbers on one printed line (a list answer: a gradient, a pair of counts,
  quantized codes); every printed word and quoted string (a str answer: a BPE merge). ANSWER_KIND
  narrows a known checker to its kind of answer, to keep the test fast; any other checker gets all three.
* a checker of a function (its parameter is `fn` or `cls`): a function that returns a printed number
  whatever its arguments (a reader who copies a number into `return`), unless the function's result
  cannot be a number; those are listed in NOT_APPLICABLE, each with its reason.

A checker is called with its output captured and the global random states (torch, random, numpy) and
torch's thread count put back afterwards: the probe prints no hints into the test log and changes
nothing other tests see. Accepted answers judged by hand are in COINCIDENCES (let through);
any other one fails: a leak is fixed in the exercise, not listed here.
"""

from __future__ import annotations

import contextlib
import functools
import html
import importlib
import inspect
import io
import json
import math
import pkgutil
import random
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

import slmbook.exercises
from slmbook.chapters import CHAPTERS
from slmbook.exercises import Result

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# Parameter names of the checkers (the package's convention): the reader's value, or the reader's code.
VALUE_PARAMETERS = {"answer"}
CALLABLE_PARAMETERS = {"fn", "cls"}

# Checkers of a function whose result cannot be one printed number: a function returning a constant
# cannot pass them, so the constant-function probe is not applicable (and some would make it slow).
NOT_APPLICABLE = {
    "ch02.check_split_heads": "returns a view of a fresh random tensor, checked to share its storage",
    "ch02.check_target_rank": "returns a (batch, seq) tensor of ranks of fresh random logits",
    "ch02.check_sliding_window_mask": "returns a bool mask tensor, checked for several sizes",
    "ch02.check_two_layer_module": "the answer is an nn.Module class, checked by building and running it",
    "ch02.check_to_device": "returns a dict of tensors moved to the meta device",
    "ch04.check_remove_repeated_lines": "returns a list of stories, checked on fresh random corpora",
    "ch07.check_rope_rotation": "returns the rotated vector of random inputs (a tensor)",
    "ch08.check_attention_weights": "returns a (T, T) tensor of weights of random queries and keys",
    "ch10.check_rmsnorm": "returns the normalized random tensor",
    "ch14.check_accumulated_gradient": "its result is the .grad it leaves in a fresh model, not a return value",
}

# What each known checker of a value takes (as its docstring says), so that it is tried only with
# candidates of that kind. A checker of a value not named here is tried with every kind: a new exercise
# is covered without editing this file.
NUMBER, NUMBERS, WORD = "a number", "a list of numbers", "a str"  # NUMBERS: of any length; an int n: of n
ANSWER_KIND = {
    "ch00.check_car_count": NUMBER,
    "ch01.check_neuron_gradient": 3,  # [dL/dw1, dL/dw2, dL/db]
    "ch01.check_adam_two_steps": NUMBER,
    "ch02.check_bf16_first_lost_integer": NUMBER,
    "ch02.check_second_derivative": NUMBER,
    "ch03.check_kv_cache_bytes": NUMBER,
    "ch03.check_adamw_static_bytes": NUMBER,
    "ch03.check_attention_crossover": NUMBER,
    "ch04.check_budget_parameters": NUMBER,
    "ch04.check_name_swap_jaccard": NUMBER,
    "ch05.check_perplexity": NUMBER,
    "ch05.check_named_lily": NUMBER,
    "ch06.check_first_merge_count": NUMBER,
    "ch06.check_bits_per_byte": NUMBER,
    "ch07.check_slowest_pair_turn": NUMBER,
    "ch09.check_book_tokens_per_gib": NUMBER,
    "ch10.check_gelu_hidden_matching_qwen3_swiglu": NUMBER,
    "ch12.check_absmax_codes": 5,  # the codes of the 5 weights of ROW
    "ch12.check_gptq_bytes": NUMBER,
    "ch13.check_mixed_model": 2,  # [total, active]
    "ch13.check_dropped": NUMBER,
    "ch14.check_first_step_ratio": NUMBER,
}
ALL_KINDS = (NUMBER, NUMBERS, WORD)

MAX_RUN = 8  # the longest run of consecutive printed numbers tried as a list answer

# ---------------------------------------------------------------------------------------------------
# What a stored notebook shows
# ---------------------------------------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
HTML_HIDDEN = re.compile(r"<(style|script)\b.*?</\1>", re.IGNORECASE | re.DOTALL)
HTML_TAG = re.compile(r"<[^>]*>")

NUMBER_PATTERN = re.compile(r"""
    (?<![\w.])                                          # not part of a name (float32, x86_64) or of another number
    (?P<sign>[-+\u2212]?)
    (?P<mantissa>(?:\d{1,3}(?:,\d{3})+|\d{1,3}(?:_\d{3})+|\d+)(?:\.\d+)?|\.\d+)
    (?P<exponent>[eE][-+]?\d+)?
    (?:[ \u00a0\u202f]?(?P<unit>KiB|MiB|GiB|TiB|kB|KB|MB|GB|TB|%|thousand|million|billion|trillion
                               |[kKMBGT](?![a-z])))?
""", re.VERBOSE)

SCALE = {"%": 0.01, "k": 1e3, "K": 1e3, "thousand": 1e3, "M": 1e6, "million": 1e6, "B": 1e9, "G": 1e9,
         "billion": 1e9, "T": 1e12, "trillion": 1e12, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
         "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}

QUOTED = re.compile(r"""b?'([^'\n]{1,40})'|b?"([^"\n]{1,40})\"""")
PUNCTUATION = ".,:;!?()[]{}<>\"'`"


def output_texts(notebook: dict) -> list[str]:
    """The text of every stored output of a notebook (one string per output and mime type)."""
    texts = []
    for cell in notebook.get("cells", []):
        for output in cell.get("outputs", []):
            if "text" in output:
                texts.append("".join(output["text"]))
            for mime, value in output.get("data", {}).items():
                if not mime.startswith("text/"):
                    continue
                value = "".join(value) if isinstance(value, list) else str(value)
                if mime == "text/html":
                    value = html.unescape(HTML_TAG.sub(" ", HTML_HIDDEN.sub(" ", value)))
                texts.append(value)
            if output.get("output_type") == "error":
                texts.append("\n".join([output.get("ename", ""), output.get("evalue", ""),
                                        *output.get("traceback", [])]))
    return [ANSI.sub("", t).replace("\r", "\n") for t in texts]


def _as_number(value: float):
    """A printed value as the reader would type it: an int when it is whole, else a float."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e18:
        return int(value)
    return value


def numbers_in(text: str) -> list[list[tuple[float, float]]]:
    """Per line of `text`, its numbers in order, each as (value as printed, value scaled by its unit)."""
    lines = []
    for line in text.split("\n"):
        row = []
        for match in NUMBER_PATTERN.finditer(line):
            mantissa = match["mantissa"].replace(",", "").replace("_", "")
            try:
                value = float(mantissa + (match["exponent"] or ""))
            except ValueError:
                continue
            if match["sign"] in ("-", "\u2212"):
                value = -value
            unit = (match["unit"] or "").strip()
            row.append((value, value * SCALE.get(unit, 1)))
        if row:
            lines.append(row)
    return lines


def _key(value) -> tuple:
    """Tell 3 from 3.0 (an int answer and a float answer are different answers) and keep lists apart."""
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(_key(v) for v in value))
    return (type(value).__name__, value)


@dataclass
class Shown:
    """What a notebook shows, as candidate answers: numbers, runs of numbers, strings."""
    numbers: dict = field(default_factory=dict)  # key -> int or float
    runs: dict = field(default_factory=dict)  # key -> list of numbers
    words: dict = field(default_factory=dict)  # key -> str

    def add_number(self, value: float) -> None:
        for v in (_as_number(value), float(value)):  # 3 and 3.0 both (a set would keep one of them)
            self.numbers.setdefault(_key(v), v)

    def add_run(self, values: list) -> None:
        self.runs.setdefault(_key(values), list(values))

    def add_word(self, word: str) -> None:
        if word:
            self.words.setdefault(word, word)


def shown_in(texts: list[str]) -> Shown:
    shown = Shown()
    for text in texts:
        for row in numbers_in(text):
            for raw, scaled in row:
                shown.add_number(raw)
                shown.add_number(scaled)
            for variant in ([_as_number(raw) for raw, _ in row], [_as_number(scaled) for _, scaled in row]):
                for length in range(2, MAX_RUN + 1):
                    for start in range(len(variant) - length + 1):
                        shown.add_run(variant[start:start + length])
                if len(variant) > MAX_RUN:
                    shown.add_run(variant)  # a whole printed row of numbers
        for token in text.split():  # a word as the reader would copy it; a number is a number (above)
            word = token.strip(PUNCTUATION)
            if not NUMBER_PATTERN.fullmatch(word):
                shown.add_word(word)
        for match in QUOTED.finditer(text):  # a printed str or bytes, spaces and digits included: ' t', '12'
            shown.add_word(match[1] if match[1] is not None else match[2])
    return shown


@functools.cache
def notebook_shown(notebook: str) -> Shown:
    return shown_in(output_texts(json.loads((NOTEBOOKS / notebook).read_text(encoding="utf-8"))))


# ---------------------------------------------------------------------------------------------------
# The checkers, found by inspection
# ---------------------------------------------------------------------------------------------------

def chapter_modules() -> dict[int, object]:
    """{chapter number: slmbook.exercises.chNN} for every chapter module of the package."""
    modules = {}
    for info in pkgutil.iter_modules(slmbook.exercises.__path__):
        match = re.fullmatch(r"ch(\d\d)", info.name)
        if match:
            modules[int(match[1])] = importlib.import_module(f"slmbook.exercises.{info.name}")
    return modules


def checkers(module) -> dict[str, object]:
    """{'chNN.check_x': function} for the public check_* functions defined in the module itself."""
    short = module.__name__.rsplit(".", 1)[1]
    return {f"{short}.{name}": fn for name, fn in inspect.getmembers(module, inspect.isfunction)
            if name.startswith("check_") and fn.__module__ == module.__name__}


def answer_parameter(check) -> str:
    """The name of the checker's first parameter: what the reader hands in."""
    return next(iter(inspect.signature(check).parameters))


@contextlib.contextmanager
def quiet_and_isolated():
    """Capture what a checker prints or warns, and put the global random states back afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _name(check) -> str:
    return getattr(check, "__name__", None) or repr(check)


def accepts(check, answer) -> bool:
    """Whether `check` marks `answer` correct (a checker must never raise: a notebook always runs through)."""
    try:
        with quiet_and_isolated():
            result = check(answer)
    except Exception as error:  # reported with the answer that caused it
        raise AssertionError(f"{_name(check)}({answer!r}) raised {type(error).__name__}: {error}") from error
    assert isinstance(result, Result), f"{_name(check)} returned {type(result).__name__}, not a Result"
    return result.correct


def _constant(value):
    def returns_a_printed_number(*args, **kwargs):
        return value
    return returns_a_printed_number


def accepted_answers(name: str, check, shown: Shown) -> list:
    """Every answer from `shown` that `check` marks correct, tried as that checker's kind of answer."""
    parameter = answer_parameter(check)
    if parameter in CALLABLE_PARAMETERS:
        if name in NOT_APPLICABLE:
            return []
        return [f"a function returning {v!r}" for v in shown.numbers.values() if accepts(check, _constant(v))]
    assert parameter in VALUE_PARAMETERS, (
        f"{name}({parameter}, ...): a checker whose parameter is neither a value {sorted(VALUE_PARAMETERS)} nor "
        f"code {sorted(CALLABLE_PARAMETERS)}; tell this test what its answer is")
    kinds = (ANSWER_KIND[name],) if name in ANSWER_KIND else ALL_KINDS
    candidates = []
    for kind in kinds:
        if kind == NUMBER:
            candidates += shown.numbers.values()
        elif kind == WORD:
            candidates += shown.words.values()
        else:  # a list: of any length (NUMBERS) or of `kind` numbers
            candidates += [run for run in shown.runs.values() if kind == NUMBERS or len(run) == kind]
    return [answer for answer in candidates if accepts(check, answer)]


def leaks(chapter: int, shown: Shown, modules=None) -> dict[str, list]:
    """{checker: the shown answers it accepts} for one chapter, only the checkers that accept some."""
    module = (modules or chapter_modules())[chapter]
    found = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of tiny models: threads only fight over the cores
    try:
        for name, check in checkers(module).items():
            accepted = accepted_answers(name, check, shown)
            if accepted:
                found[name] = accepted
    finally:
        torch.set_num_threads(threads)
    return found


# ---------------------------------------------------------------------------------------------------
# What was found, judged by hand
# ---------------------------------------------------------------------------------------------------

# Answers a checker accepts that the notebook does show, each looked at and judged not to give the
# answer away. Only these exact answers are let through: any other accepted answer fails.
COINCIDENCES = {
    ("ch13.check_dropped", 3): "a small count that any notebook prints: the 3s on screen are the loads and "
                               "'3 tokens lost every expert' of the chapter's own sentence at capacity factor "
                               "0.5, and '3 Axes' of a figure, not CHOICES' dropped assignments",
}



def _judged(name: str, answer, table: dict) -> bool:
    return any(name == n and _key(answer) == _key(a) for n, a in table)


# ---------------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------------

NOTEBOOK = {ch.number: ch.notebook for ch in CHAPTERS}


def test_every_exercise_module_is_a_chapter_with_checkers():
    modules = chapter_modules()
    assert sorted(modules) == sorted(NOTEBOOK)  # chapters 0-14 all have exercises
    for number, module in modules.items():
        assert (NOTEBOOKS / NOTEBOOK[number]).exists()
        found = checkers(module)
        assert found, f"{module.__name__} defines no check_* function"
        for name, check in found.items():
            assert answer_parameter(check) in VALUE_PARAMETERS | CALLABLE_PARAMETERS, name
    every = {name: check for module in modules.values() for name, check in checkers(module).items()}
    for name in NOT_APPLICABLE:  # no stale entry, and only checkers of code are exempted
        assert name in every, f"NOT_APPLICABLE names {name}, which is not a checker any more"
        assert answer_parameter(every[name]) in CALLABLE_PARAMETERS, name
    for name, kind in ANSWER_KIND.items():
        assert name in every, f"ANSWER_KIND names {name}, which is not a checker any more"
        assert answer_parameter(every[name]) in VALUE_PARAMETERS, name
        assert kind in ALL_KINDS or (isinstance(kind, int) and 2 <= kind <= MAX_RUN), name
    for name, answer in COINCIDENCES:  # each judged answer is still a right answer
        assert name in every and accepts(every[name], answer), f"({name!r}, {answer!r}) is stale: remove it"


@pytest.mark.parametrize("chapter", sorted(NOTEBOOK), ids=lambda n: f"ch{n:02d}")
def test_no_checker_accepts_what_the_notebook_shows(chapter):
    notebook = NOTEBOOK[chapter]
    shown = notebook_shown(notebook)
    assert len(shown.numbers) > 20 and len(shown.words) > 20, f"{notebook} has no stored outputs to search"
    found = {name: [a for a in accepted if not _judged(name, a, COINCIDENCES)]
             for name, accepted in leaks(chapter, shown).items()}
    found = {name: accepted for name, accepted in found.items() if accepted}
    assert not found, "\n".join(f"{name} accepts what {notebook} shows in its stored outputs: {accepted[:10]}"
                                for name, accepted in found.items())



# ---------------------------------------------------------------------------------------------------
# The harness can fail: a made-up notebook that shows right answers is caught
# ---------------------------------------------------------------------------------------------------

def _fake_notebook(*outputs) -> dict:
    return {"cells": [{"cell_type": "code", "source": "", "outputs": list(outputs)}]}


def _stream(text):
    return {"output_type": "stream", "name": "stdout", "text": text.splitlines(keepends=True)}


def _display(mime, text):
    return {"output_type": "display_data", "data": {mime: text.splitlines(keepends=True)}, "metadata": {}}


def test_numbers_are_read_as_printed_and_scaled_by_their_unit():
    (row,) = numbers_in("50.9M, 1.02B, 12%, 3.50 GiB, 64.00 KiB, 1,634,304, 32_768, 1.5e-3, -0.254, \u22124, "
                        "float32 x86_64 Qwen3 torch-v2.13")
    assert row == [(50.9, 50.9e6), (1.02, 1.02e9), (12.0, 0.12), (3.5, 3.5 * 2**30), (64.0, 64 * 2**10),
                   (1634304.0, 1634304.0), (32768.0, 32768.0), (1.5e-3, 1.5e-3), (-0.254, -0.254),
                   (-4.0, -4.0)]  # no number inside a name
    shown = shown_in(["257 and 0.5"])
    assert {_key(v) for v in shown.numbers.values()} == {("int", 257), ("float", 257.0), ("float", 0.5)}


def test_the_harness_catches_right_answers_shown_in_every_kind_of_output():
    from slmbook.data import load_stories
    from slmbook.exercises import ch01, ch02, ch03, ch04, ch07, ch11, ch12

    # right answers, computed independently (as in the per-chapter tests), never read from a checker
    slowest_turn = 2 * math.pi * 1_000_000.0 ** (126 / 128)
    budget = math.sqrt(400e12 * 3600 / 120)  # C = 6 N (20 N)
    y = 1 / (1 + math.exp(1.4))  # chapter 1's neuron: z = 0.5 - 2 + 0.1
    dz = 2 * (y - 1) * y * (1 - y)
    story = load_stories("validation", source="sample", verbose=False)[1]

    def grams(text):
        words = re.findall(r"\w+", text.lower())
        return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}

    a, b = grams(story), grams(re.sub(r"\bRoxy\b", "Mia", story))
    jaccard = len(a & b) / len(a | b)
    notebook = _fake_notebook(
        _stream("bfloat16 first loses 257\n"),  # an int (chapter 2)
        {"output_type": "execute_result", "execution_count": 1, "metadata": {},
         "data": {"text/plain": ["1,634,304 bytes"]}},  # thousands separators (chapter 12)
        _display("text/html", "<table><tr><td style='width: 50%'>3.50 GiB</td></tr></table>"),  # binary unit (3)
        _display("text/markdown", f"**{budget / 1e6:.1f}M** parameters, and {100 * jaccard:.2f}% shared"),  # M, %
        _stream(f"one turn every {slowest_turn:.4e} positions\r"),  # scientific notation (chapter 7)
        _stream(f"grad {dz:.8f} {2 * dz:.8f} {dz:.8f}\ncodes [10, -50, 127, 3, -25]\n"),  # lists (1, 12)
        {"output_type": "error", "ename": "ValueError", "evalue": "", "traceback": []},
    )
    shown = shown_in(output_texts(notebook))
    assert accepted_answers("ch02.check_bf16_first_lost_integer", ch02.check_bf16_first_lost_integer, shown) == [257]
    assert accepted_answers("ch12.check_gptq_bytes", ch12.check_gptq_bytes, shown) == [1_634_304]
    assert accepted_answers("ch03.check_kv_cache_bytes", ch03.check_kv_cache_bytes, shown)
    assert accepted_answers("ch04.check_budget_parameters", ch04.check_budget_parameters, shown)
    assert accepted_answers("ch04.check_name_swap_jaccard", ch04.check_name_swap_jaccard, shown)
    assert accepted_answers("ch07.check_slowest_pair_turn", ch07.check_slowest_pair_turn, shown)
    assert accepted_answers("ch01.check_neuron_gradient", ch01.check_neuron_gradient, shown)
    # the chapter's test, on this notebook: the checkers are found and the two of chapter 12 both fail it
    assert set(leaks(12, shown)) == {"ch12.check_gptq_bytes", "ch12.check_absmax_codes"}

    # a function checker, with one configuration whose count is on screen (count by the formula)
    config = ch11.EXERCISE_CONFIGS[0]
    q, kv = config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    per_layer = (2 * config.dim * q + 2 * config.dim * kv + 2 * config.head_dim + 3 * config.dim * config.hidden_dim
                 + 2 * config.dim)
    count = config.vocab_size * config.dim + config.n_layers * per_layer + config.dim  # tied head
    one_config = functools.partial(ch11.check_parameter_count, configs=(config,))
    assert accepted_answers("one config", one_config, shown_in([f"{count:,} parameters"])) == [
        f"a function returning {count!r}"]

    # a str answer, and a checker not in ANSWER_KIND (tried with every kind of answer)
    def check_a_word(answer):
        return Result("made up", "correct" if answer == " t" else "wrong", "")

    assert accepted_answers("made up", check_a_word, shown_in(["pair b' ' + b't' -> b' t'"])) == [" t"]
    assert accepted_answers("made up", check_a_word, shown_in(["the cat sat"])) == []


def test_probing_prints_nothing_and_leaves_the_random_states_as_they_were(capfd):
    from slmbook.exercises import ch13

    def noisy(answer):
        print("Hint: try again")
        torch.rand(3), random.random(), np.random.rand()
        return Result("noisy", "wrong", "Hint: try again")

    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy(), torch.get_num_threads()
    assert not accepts(noisy, 1.0)
    assert not accepts(ch13.check_mixed_model, [1, 2])  # builds unseeded models: draws from torch's generator
    assert leaks(13, shown_in(["nothing to see: 0.123456789"])) == {}
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert (np.random.get_state()[1] == states[2]).all() and torch.get_num_threads() == states[3]
    out, err = capfd.readouterr()
    assert "Hint" not in out + err
