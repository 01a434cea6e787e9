"""Qwen's tokenizer and Qwen3's chat format: exactly what the real model reads (chapter 11).

Qwen2 and Qwen3 share one byte-level BPE: chapter 6's algorithm, the one GPT-2 uses, with three
differences, all of them stored in the repository's `tokenizer.json`:

- the text is first put in Unicode NFC form, so "é" typed as one code point or as "e" plus an accent
  gives the same ids;
- the splitting regex (`QWEN_PATTERN`) cuts numbers into single digits (GPT-2 keeps runs of digits
  together) and lets a word carry one leading non-letter: " hello", "(hello", "$hello";
- after the 151,643 BPE tokens come the added tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`,
  `<think>`, `</think>`, ...). Merges never make them and they are never split: wherever "<|im_end|>"
  appears in the text it is one id.

`QwenTokenizer` runs that file with `tokenizers`, the library it was written for, so the ids are the
reference ids by construction. It offers the interface of the book's other tokenizers (`encode`,
`encode_ordinary`, `decode`, `n_vocab`, `eot_token`) and `encode_ordinary` spells out the three stages.

A conversation reaches the model as one string in the ChatML format, one turn per role:

    <|im_start|>system\\nYou are concise.<|im_end|>\\n
    <|im_start|>user\\nWhat is 2+2?<|im_end|>\\n
    <|im_start|>assistant\\n                       <- add_generation_prompt: the model writes from here

`render_chat` is Qwen3's chat template, the Jinja program in the repository's tokenizer_config.json,
written out in Python; the tests check it against transformers running that Jinja template.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from slmbook.tokenizer import bytes_to_unicode

# Qwen2/Qwen3's pre-tokenizer (the Split step of tokenizer.json): contractions in any case, a letter
# run with one optional leading non-letter, ONE digit, a punctuation run with the newlines after it,
# newline runs, spaces (the last space of a run is left to the next word).
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

ENDOFTEXT = "<|endoftext|>"  # end of a document (pre-training) and the padding token
IM_START, IM_END = "<|im_start|>", "<|im_end|>"  # the frame of each chat turn
THINK, END_THINK = "<think>", "</think>"  # Qwen3's reasoning block in an assistant turn

ROLES = ("system", "user", "assistant")
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


class QwenTokenizer:
    """Qwen's byte-level BPE from a repository's tokenizer.json, with the book's tokenizer interface.

    `encode` recognises the added tokens written in the text ("<|im_start|>" -> one id), as the model
    was trained to read them; `encode_ordinary` treats them as plain characters (for untrusted text).
    """

    name = "qwen"

    def __init__(self, tokenizer, eos_token: str | None = None, source: str = ""):
        from tokenizers import Tokenizer

        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer={tokenizer!r}: expected a tokenizers.Tokenizer (e.g. from tokenizer.json)")
        self.tokenizer = tokenizer
        self.source = source
        self.special_tokens = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items()}
        if ENDOFTEXT not in self.special_tokens:
            raise ValueError(f"{source or 'tokenizer'} has no {ENDOFTEXT!r} added token: not a Qwen tokenizer")
        self.eot_token = self.special_tokens[ENDOFTEXT]
        eos_token = eos_token or ENDOFTEXT
        if eos_token not in self.special_tokens:
            raise ValueError(f"eos_token={eos_token!r} is not an added token of {source or 'the tokenizer'}")
        self.eos_token = eos_token
        self.eos_token_id = self.special_tokens[eos_token]  # where a reply ends (<|im_end|> for a chat model)
        self._byte_of = {ch: b for b, ch in bytes_to_unicode().items()}

    @classmethod
    def from_folder(cls, folder: str | Path) -> "QwenTokenizer":
        """tokenizer.json (required) and tokenizer_config.json (its eos_token, when present) of `folder`."""
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            raise ValueError(f"folder={str(folder)!r} has no {TOKENIZER_FILE}: expected a Hugging Face model folder")
        eos_token = None
        config_path = folder / TOKENIZER_CONFIG_FILE
        if config_path.is_file():
            eos_token = json.loads(config_path.read_text(encoding="utf-8")).get("eos_token")
            if isinstance(eos_token, dict):  # older files store an AddedToken as a dict
                eos_token = eos_token.get("content")
        return cls(Tokenizer.from_file(str(path)), eos_token=eos_token, source=str(path))

    @classmethod
    def from_pretrained(cls, name: str | Path, revision: str | None = None, cache_dir=None,
                        local_files_only: bool = False) -> "QwenTokenizer":
        """The tokenizer of a hub repository ("Qwen/Qwen3-0.6B") or a local folder; see slmbook.pretrained."""
        from slmbook.hub import resolve

        folder = resolve(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                         need=("tokenizer",))
        return cls.from_folder(folder)

    # -- the book's tokenizer interface --------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        """Ids the tokenizer can produce (BPE tokens + added tokens); the model's table may be larger."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        """The id of an added token such as '<|im_end|>'."""
        if token not in self.special_tokens:
            raise ValueError(f"token={token!r} is not an added token; added tokens: {sorted(self.special_tokens)}")
        return self.special_tokens[token]

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; added tokens written in it ("<|im_start|>", "<think>", ...) become their ids."""
        _check_text(text)
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text` with every character taken as text: the BPE proper, its three stages in a row."""
        _check_text(text)
        normalized = self.tokenizer.normalizer.normalize_str(text) if self.tokenizer.normalizer else text  # NFC
        pieces = self.tokenizer.pre_tokenizer.pre_tokenize_str(normalized)  # QWEN_PATTERN, then bytes as characters
        return [token.id for piece, _ in pieces for token in self.tokenizer.model.tokenize(piece)]  # merges

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, added tokens included (bytes that do not form UTF-8 become U+FFFD)."""
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.n_vocab:
                raise ValueError(f"token id {i} is out of range: allowed 0..{self.n_vocab - 1}")
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def decode_single_token_bytes(self, token: int) -> bytes:
        """The bytes one id stands for (a BPE token may hold part of a UTF-8 character)."""
        token = int(token)
        if not 0 <= token < self.n_vocab:
            raise ValueError(f"token id {token} is out of range: allowed 0..{self.n_vocab - 1}")
        text = self.tokenizer.id_to_token(token)
        if token in self.special_tokens.values():
            return text.encode("utf-8")
        return bytes(self._byte_of[ch] for ch in text)  # tokenizer.json writes bytes as GPT-2's characters

    # -- chat --------------------------------------------------------------------------------------
    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                    enable_thinking: bool = True) -> str:
        """The prompt string of a conversation (see `render_chat`)."""
        return render_chat(messages, add_generation_prompt, enable_thinking)

    def encode_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True,
                    enable_thinking: bool = True) -> list[int]:
        """The token ids the model reads for a conversation (what transformers' apply_chat_template gives)."""
        return self.encode(render_chat(messages, add_generation_prompt, enable_thinking))

    def __repr__(self) -> str:
        return f"<QwenTokenizer n_vocab={self.n_vocab} eos={self.eos_token!r} from {self.source or '?'}>"


def _check_text(text, name: str = "text") -> None:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")


# --- Qwen3's chat template -------------------------------------------------------------------------


def split_thinking(content: str) -> tuple[str, str]:
    """(reasoning, answer) of an assistant text "<think>\\n...\\n</think>\\n\\nanswer"; ("", text) without one."""
    if END_THINK not in content:
        return "", content
    reasoning = content.split(END_THINK)[0].rstrip("\n").split(THINK)[-1].lstrip("\n")
    answer = content.split(END_THINK)[-1].lstrip("\n")
    return reasoning, answer


def _check_messages(messages) -> None:
    if isinstance(messages, (str, dict)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError(f"messages={messages!r}: expected a non-empty list of {{'role': ..., 'content': ...}} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"messages[{i}]={m!r}: expected a dict with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"messages[{i}]['role']={m['role']!r}: allowed {ROLES} (tools and tool calls need "
                             "the repository's Jinja template: transformers' apply_chat_template)")
        if not isinstance(m["content"], str):
            raise ValueError(f"messages[{i}]['content'] is a {type(m['content']).__name__}: must be a str")
        if m.get("tool_calls"):
            raise ValueError(f"messages[{i}] has tool_calls: this template covers text turns only")
        if m.get("reasoning_content") is not None and not isinstance(m["reasoning_content"], str):
            raise ValueError(f"messages[{i}]['reasoning_content'] must be a str or None")


def _is_tool_response(content: str) -> bool:
    return content.startswith("<tool_response>") and content.endswith("</tool_response>")


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = False, enable_thinking: bool = True) -> str:
    """Qwen3's chat template: a list of {'role', 'content'} turns -> the string the model reads.

    - Every turn is framed as `<|im_start|>{role}\\n{content}<|im_end|>\\n`; a system message first.
    - An assistant turn may think: `<think>\\n{reasoning}\\n</think>\\n\\n{answer}` (the reasoning comes from
      its 'reasoning_content' or from a <think> block inside its content). Reasoning is shown only for
      the assistant turns after the last user message: older answers keep their answer and lose their
      thinking, so a long chat does not fill the context with old reasoning. The last turn, when it is
      an assistant's, always gets a (possibly empty) think block.
    - `add_generation_prompt=True` ends with `<|im_start|>assistant\\n` so that the model answers next.
      Qwen3 then thinks first by default; `enable_thinking=False` appends an empty block
      `<think>\\n\\n</think>\\n\\n`, which makes it answer at once.
    """
    _check_messages(messages)
    if not isinstance(add_generation_prompt, bool) or not isinstance(enable_thinking, bool):
        raise ValueError(f"add_generation_prompt={add_generation_prompt!r}, enable_thinking={enable_thinking!r}: "
                         "must be True or False")
    last = len(messages) - 1
    last_query = next((i for i in range(last, -1, -1) if messages[i]["role"] == "user"
                       and not _is_tool_response(messages[i]["content"])), last)
    out = []
    if messages[0]["role"] == "system":
        out.append(f"{IM_START}system\n{messages[0]['content']}{IM_END}\n")
    for i, message in enumerate(messages):
        role, content = message["role"], message["content"]
        if role == "user" or (role == "system" and i > 0):
            out.append(f"{IM_START}{role}\n{content}{IM_END}\n")
        elif role == "assistant":
            if isinstance(message.get("reasoning_content"), str):
                reasoning = message["reasoning_content"]
            else:
                reasoning, content = split_thinking(content)
            if i > last_query and (i == last or reasoning):
                content = f"{THINK}\n{reasoning.strip(chr(10))}\n{END_THINK}\n\n{content.lstrip(chr(10))}"
            out.append(f"{IM_START}assistant\n{content}{IM_END}\n")
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
        if not enable_thinking:
            out.append(f"{THINK}\n\n{END_THINK}\n\n")
    return "".join(out)
