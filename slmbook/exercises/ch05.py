"""Chapter 5's exercises: perplexity by hand, and a bigram probability counted on real stories."""

from __future__ import annotations

import functools
import math

from slmbook.exercises import Result, close, not_attempted, verdict

# The probabilities a model gave to the true next token at four positions of a text.
TRUE_TOKEN_PROBS = (0.5, 0.25, 0.125, 0.5)


def check_perplexity(answer) -> Result:
    """The perplexity of the model on those four tokens (3 significant digits)."""
    if answer is None:
        return not_attempted("chapter 5: perplexity by hand")
    expected = math.exp(-sum(math.log(p) for p in TRUE_TOKEN_PROBS) / len(TRUE_TOKEN_PROBS))
    return verdict("chapter 5: perplexity by hand", answer, close(answer, expected, rel=1e-3),
                   hint="cross-entropy = mean of -ln p over the four tokens; perplexity = exp(cross-entropy). "
                        "(Here it is 2 to the power of the mean number of halvings.)",
                   success=f"correct! {expected:.4f}: as unsure as a fair choice among {expected:.2f} tokens")


@functools.lru_cache(maxsize=8)
def bigram_probability(first: str, second: str) -> float:
    """count(first, second) / count(first, anything) over GPT-2 tokens of the validation stories
    (each story tokenized on its own; the story's last token is followed by nothing)."""
    from slmbook.data import load_stories
    from slmbook.tokenizer import gpt2_encoding

    enc = gpt2_encoding()
    a, b = enc.encode_single_token(first), enc.encode_single_token(second)
    pairs = followed = 0
    for story in load_stories("validation", source="sample", verbose=False):
        ids = enc.encode_ordinary(story)
        for x, y in zip(ids, ids[1:], strict=False):
            if x == a:
                followed += 1
                pairs += y == b
    return pairs / followed


def check_named_lily(answer) -> Result:
    """In the 1,000 validation stories (GPT-2 tokens), how often is the token ' named' followed by
    ' Lily'? Give the maximum-likelihood bigram probability p(' Lily' | ' named') (3 significant digits)."""
    if answer is None:
        return not_attempted("chapter 5: p(' Lily' | ' named')")
    expected = bigram_probability(" named", " Lily")
    return verdict("chapter 5: p(' Lily' | ' named')", answer, close(answer, expected, rel=1e-3),
                   hint="tokenize each story with gpt2_encoding().encode_ordinary, count the pairs (' named', x) "
                        "and the pairs (' named', ' Lily'), divide",
                   success=f"correct! {expected:.4f}: TinyStories has a favourite name")
