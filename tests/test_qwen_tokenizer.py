"""Qwen's tokenizer and Qwen3's chat template against transformers' Qwen2Tokenizer and its Jinja rendering.

The Qwen files are built offline: GPT-2's shipped BPE (vocab.json, merges.txt) in Qwen's tokenizer.json
format (NFC, Qwen's regex, byte level) plus Qwen3's added tokens, and a tokenizer_config.json holding
Qwen3's published chat template (Jinja, written out below as test data). transformers rebuilds a
Qwen2Tokenizer's pipeline from its own definition (it reads only the vocabulary and merges from the
file), so its ids are an independent reference for the file and for our reading of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slmbook.qwen_tokenizer import (
    END_THINK,
    ENDOFTEXT,
    IM_END,
    IM_START,
    QWEN_PATTERN,
    THINK,
    QwenTokenizer,
    render_chat,
    split_thinking,
)
from slmbook.tokenizer import GPT2_DIR, bytes_to_unicode, pretokenize

# Qwen3's added tokens, in id order after the BPE vocabulary (151643.. in the real files), with their
# "special" flag as published: the tool and thinking tags are added but not special.
QWEN3_ADDED_TOKENS = [
    (ENDOFTEXT, True), (IM_START, True), (IM_END, True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    (THINK, False), (END_THINK, False),
]

# Qwen3's chat template as published in Qwen/Qwen3-0.6B's tokenizer_config.json (test data: the
# reference our Python `render_chat` is compared with, run by transformers' Jinja environment).
QWEN3_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""


def write_tokenizer_files(folder: str | Path) -> Path:
    """tokenizer.json + tokenizer_config.json of a Qwen3-style tokenizer over GPT-2's shipped BPE.

    Laid out as Qwen's files are: the BPE vocabulary, then <|endoftext|> as the first added token
    (50256 here, 151643 in Qwen's), then the rest of Qwen3's added tokens.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = json.loads((GPT2_DIR / "vocab.json").read_text(encoding="utf-8"))
    del vocab[ENDOFTEXT]
    lines = (GPT2_DIR / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    for content, special in QWEN3_ADDED_TOKENS:
        token = AddedToken(content, special=special, normalized=False)
        tokenizer.add_special_tokens([token]) if special else tokenizer.add_tokens([token])
    tokenizer.save(str(folder / "tokenizer.json"))
    added = {str(tokenizer.token_to_id(c)): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                             "single_word": False, "special": s} for c, s in QWEN3_ADDED_TOKENS}
    config = {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": [c for c, s in QWEN3_ADDED_TOKENS[1:14]], "bos_token": None,
        "chat_template": QWEN3_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": IM_END,
        "errors": "replace", "model_max_length": 131072, "pad_token": ENDOFTEXT, "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tokenizer_files(tmp_path_factory.mktemp("qwen-tokenizer"))


@pytest.fixture(scope="module")
def ours(folder):
    return QwenTokenizer.from_folder(folder)


@pytest.fixture(scope="module")
def reference(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


TEXTS = [
    "", " ", "   ", "\n", "\n\n\n", "\r\n", "\t\tindented", "Once upon a time, there was a little girl named Lily.",
    "  two leading spaces and trailing  ", "line one\nline two\n\n  line four\r\nend\n",
    "12345 3.14159 1,000,000 and 2024-05-01", "I'M sure YOU'LL see we'd DON'T it's",
    "café naïve résumé", "cafe\u0301 (e + combining accent, NFC makes it é)", "ﬁ ligature Ⅻ ½ ²",
    "你好，世界！这是一个测试。", "こんにちは世界", "Привет, мир", "مرحبا بالعالم", "नमस्ते दुनिया",
    "👍🏽 🇫🇷 👨‍👩‍👧 🤖", "∀x ∈ ℝ: x² ≥ 0", "def f(x):\n    return x ** 2  # comment\n",
    '{"key": [1, 2, 3], "k2": null}', "$100 (approx.) #hashtag @user ...!!! ???",
    f"{IM_START}user\nHi there{IM_END}\n{IM_START}assistant\n", f"{THINK}\n\n{END_THINK}\n\n",
    f"{ENDOFTEXT}{ENDOFTEXT}", "<|im_sta partial special <think no", f"x{IM_END}y<tool_call>z</tool_call>",
    "<|fim_prefix|>def<|fim_suffix|>pass<|fim_middle|>",
]


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_transformers_qwen2_tokenizer(ours, reference, text):
    expected = reference.encode(text, add_special_tokens=False)
    assert ours.encode(text) == expected
    assert ours.decode(expected) == reference.decode(expected)


def test_real_stories_tokenize_like_transformers(ours, reference, valid):
    text = "\n".join(valid[:40])
    expected = reference.encode(text, add_special_tokens=False)
    assert len(expected) > 5000
    assert ours.encode(text) == expected
    assert ours.decode(expected) == text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=30), st.sampled_from([c for c, _ in QWEN3_ADDED_TOKENS])), max_size=6))
def test_random_text_tokenizes_like_transformers(ours, reference, parts):
    text = "".join(parts)
    assert ours.encode(text) == reference.encode(text, add_special_tokens=False)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_encode_ordinary_is_the_bpe_of_the_text(ours, reference, text):
    """Without added tokens in the text, the three stages give the library's ids; decode inverts them
    up to Unicode NFC (the tokenizer normalises first)."""
    import unicodedata

    if any(c in text for c, _ in QWEN3_ADDED_TOKENS):
        return
    ids = ours.encode_ordinary(text)
    assert ids == reference.encode(text, add_special_tokens=False)
    assert ours.decode(ids) == unicodedata.normalize("NFC", text)
    assert b"".join(ours.decode_single_token_bytes(i) for i in ids) == unicodedata.normalize("NFC", text).encode()


def test_added_tokens_and_their_plain_spelling(ours, reference):
    assert ours.n_vocab == len(reference) == 50257 + len(QWEN3_ADDED_TOKENS) - 1
    assert ours.eot_token == reference.convert_tokens_to_ids(ENDOFTEXT) == 50256
    for content, _ in QWEN3_ADDED_TOKENS:
        assert ours.token_id(content) == reference.convert_tokens_to_ids(content)
        assert ours.encode(content) == [ours.token_id(content)]
        assert ours.decode_single_token_bytes(ours.token_id(content)) == content.encode()
    # tokenizer_config.json's eos_token: a chat model stops at the end of its turn
    assert ours.eos_token == IM_END and ours.eos_token_id == ours.token_id(IM_END) == reference.eos_token_id
    text = f"{IM_START}user"
    plain = ours.encode_ordinary(text)
    assert ours.token_id(IM_START) not in plain and len(plain) > 3
    assert ours.decode(plain) == text
    with pytest.raises(ValueError, match="not an added token"):
        ours.token_id("<|nope|>")
    with pytest.raises(ValueError, match="out of range"):
        ours.decode([ours.n_vocab])
    with pytest.raises(TypeError, match="must be a str"):
        ours.encode(b"bytes")


def test_qwen_pattern_is_transformers_and_splits_like_tokenizers(ours):
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    assert QWEN_PATTERN == PRETOKENIZE_REGEX
    alias = {ch: b for b, ch in bytes_to_unicode().items()}
    for text in TEXTS[:25]:
        pieces = [bytes(alias[c] for c in p).decode("utf-8", "replace")
                  for p, _ in ours.tokenizer.pre_tokenizer.pre_tokenize_str(text)]
        assert pieces == pretokenize(text, QWEN_PATTERN)  # Python's `regex` splits as the Rust library does
    # one digit per piece, a word may keep one leading non-letter; GPT-2 splits the same text otherwise
    assert pretokenize("(hi) 2024", QWEN_PATTERN) == ["(hi", ")", " ", "2", "0", "2", "4"]
    assert pretokenize("(hi) 2024") == ["(", "hi", ")", " 2024"]


# --- the chat template -------------------------------------------------------------------------------

CONVERSATIONS = {
    "one-user": [{"role": "user", "content": "What is 2+2?"}],
    "system-user": [{"role": "system", "content": "You are concise."}, {"role": "user", "content": "Hi!"}],
    "multi-turn-with-thinking-history": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "<think>\nThe user wants one colour.\n</think>\n\nBlue."},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Green."},
        {"role": "user", "content": "And one more, please."},
    ],
    "ends-with-assistant": [
        {"role": "user", "content": "Say yes."},
        {"role": "assistant", "content": "Yes."},
    ],
    "ends-with-assistant-thinking": [
        {"role": "user", "content": "Say no."},
        {"role": "assistant", "content": "<think>\n\nshort\n\n</think>\n\n\nNo."},
    ],
    "reasoning-content-field": [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1", "reasoning_content": "old thoughts"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "\nA2", "reasoning_content": "\nnew thoughts\n"},
    ],
    "after-last-query-not-last": [
        {"role": "user", "content": "<tool_response>\nresult\n</tool_response>"},
        {"role": "user", "content": "Go on."},
        {"role": "assistant", "content": "<think>step</think>partial"},
        {"role": "user", "content": "<tool_response>\n42\n</tool_response>"},
        {"role": "assistant", "content": "no thinking here"},
        {"role": "assistant", "content": "Done."},
    ],
    "second-system-and-unicode": [
        {"role": "system", "content": "Système: réponds en français 🇫🇷"},
        {"role": "user", "content": "Bonjour\n\n  ça va ?"},
        {"role": "system", "content": "A later system note."},
        {"role": "user", "content": "Et 12345 ?"},
    ],
    "no-user-at-all": [
        {"role": "system", "content": "Only a system prompt."},
        {"role": "assistant", "content": "<think>hm</think>Hello."},
    ],
}


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("enable_thinking", [True, False])
def test_chat_template_equals_transformers_jinja(ours, reference, name, add_generation_prompt, enable_thinking):
    messages = CONVERSATIONS[name]
    expected = reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             enable_thinking=enable_thinking)
    assert render_chat(messages, add_generation_prompt, enable_thinking) == expected
    ids = reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt,
                                        enable_thinking=enable_thinking, return_dict=False)
    assert ours.encode_chat(messages, add_generation_prompt, enable_thinking) == list(ids)


def test_chat_template_default_is_transformers_default(ours, reference):
    """transformers' defaults (no enable_thinking given, no generation prompt) are ours too."""
    messages = CONVERSATIONS["system-user"]
    assert ours.render_chat(messages) == reference.apply_chat_template(messages, tokenize=False)


def test_what_the_model_is_fed():
    """The thinking switch, spelled out: only the end of the prompt differs."""
    messages = [{"role": "user", "content": "Hi"}]
    assert render_chat(messages, add_generation_prompt=True) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat(messages, add_generation_prompt=True, enable_thinking=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # history keeps answers, not their thinking; the turn after the last user message keeps both
    history = render_chat(CONVERSATIONS["multi-turn-with-thinking-history"])
    assert "The user wants one colour" not in history and "<|im_start|>assistant\nBlue.<|im_end|>" in history
    assert render_chat(CONVERSATIONS["reasoning-content-field"]).endswith(
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n<think>\nnew thoughts\n</think>\n\nA2<|im_end|>\n")
    assert split_thinking("<think>\nplan\n</think>\n\nanswer") == ("plan", "answer")
    assert split_thinking("just an answer") == ("", "just an answer")


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "user"}], "'role' and 'content'"),
    ([{"role": "tool", "content": "42"}], "role'\\]='tool'"),
    ([{"role": "user", "content": ["a", "list"]}], "is a list: must be a str"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"name": "f"}]}], "tool_calls"),
    ([{"role": "assistant", "content": "", "reasoning_content": 3}], "reasoning_content"),
])
def test_chat_template_refuses_what_it_does_not_cover(messages, match):
    with pytest.raises(ValueError, match=match):
        render_chat(messages)


def test_chat_switches_must_be_booleans():
    with pytest.raises(ValueError, match="enable_thinking='no'"):
        render_chat([{"role": "user", "content": "x"}], True, "no")


def test_missing_tokenizer_file_is_named(tmp_path):
    with pytest.raises(ValueError, match="has no tokenizer.json"):
        QwenTokenizer.from_folder(tmp_path)
