"""Chapter 4's exercises: a compute-optimal budget for the book's model, and cleaning real text."""

from __future__ import annotations

from slmbook.config import BOOK
from slmbook.exercises import Result, close, verdict
from slmbook.scaling import TOKENS_PER_PARAMETER, count_parameters, training_flops


def check_book_tokens(answer) -> Result:
    """How many training tokens should the book's model (`slmbook.config.BOOK`) see by Chinchilla's
    rule of thumb (20 tokens per parameter, all parameters counted)? Within 1%."""
    expected = TOKENS_PER_PARAMETER * count_parameters(BOOK)
    return verdict("chapter 4: Chinchilla tokens for the BOOK model", answer, close(answer, expected, rel=0.01),
                   hint="count the parameters (embedding vocab_size*dim, per layer the q, k, v, o projections, "
                        "the q/k norms, two RMSNorms and the SwiGLU's three matrices; one final norm; tied head) "
                        "or use slmbook.scaling.count_parameters, then multiply by 20",
                   success=f"correct! {expected / 1e9:.2f} billion tokens (20 per parameter)")


def check_book_flops(answer) -> Result:
    """How many FLOPs does training the BOOK model on that many tokens take (C ≈ 6·N·D)? Within 1%."""
    n = count_parameters(BOOK)
    expected = training_flops(n, TOKENS_PER_PARAMETER * n)
    return verdict("chapter 4: training compute of the BOOK model", answer, close(answer, expected, rel=0.01),
                   hint="C = 6 * N * D with N the parameter count and D = 20 * N",
                   success=f"correct! {expected:.2e} FLOPs: about {expected / 400e12 / 3600:.1f} hours at a "
                           "sustained 400 TFLOP/s")


def check_damaged_story_count(answer) -> Result:
    """How many of the 1,000 shipped validation stories contain mojibake (`curation.find_mojibake`)?"""
    from slmbook.curation import find_mojibake
    from slmbook.data import load_stories

    expected = sum(bool(find_mojibake(s)) for s in load_stories("validation", source="sample", verbose=False))
    return verdict("chapter 4: stories with mojibake", answer, answer == expected,
                   hint="load_stories('validation', source='sample') and count the stories for which "
                        "slmbook.curation.find_mojibake(story) is not empty")
