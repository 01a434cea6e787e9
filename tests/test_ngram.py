"""The n-gram model against hand-computed counts and torch's cross-entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from slmbook.data import load_stories
from slmbook.ngram import NGramModel, sampling_distribution, story_ngrams, unseen_fraction
from slmbook.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def char_data():
    train = load_stories("train", source="sample", verbose=False)[:200]
    valid = load_stories("validation", source="sample", verbose=False)[:5]
    tok = CharTokenizer.train(train)
    return tok, [tok.encode_ordinary(s) for s in train], [tok.encode_ordinary(s) for s in valid]


def test_counts_by_hand():
    # vocabulary {0, 1, 2} plus eot = 3; stories "0 1 2" and "0 1 1"
    model = NGramModel(2, vocab_size=4, eot_token=3, smoothing="add-k", k=1.0).fit([[0, 1, 2], [0, 1, 1]])
    # after eot (story start): 0 twice -> (2 + 1) / (2 + 4)
    assert model.prob([3], 0) == pytest.approx(3 / 6)
    # after 1: 2 once, 1 once, eot once -> p(1 | 1) = (1 + 1) / (3 + 4)
    assert model.prob([1], 1) == pytest.approx(2 / 7)
    assert model.prob([2], 0) == pytest.approx(1 / 5)  # after 2: only eot once
    interp = NGramModel(2, vocab_size=4, eot_token=3, lambdas=(0.1, 0.3, 0.6)).fit([[0, 1, 2], [0, 1, 1]])
    # unigram counts over the 8 targets: 0:2, 1:3, 2:1, eot:2
    assert interp.prob([1], 2) == pytest.approx(0.1 / 4 + 0.3 * 1 / 8 + 0.6 * 1 / 3)
    # a context never seen gives its weight to the others
    assert interp.prob([0, 0, 0], 1) == pytest.approx(interp.prob([0], 1))
    unseen = NGramModel(2, vocab_size=5, eot_token=3, lambdas=(0.1, 0.3, 0.6)).fit([[0, 1, 2]])
    assert unseen.prob([4], 0) == pytest.approx((0.1 / 5 + 0.3 * 1 / 4) / 0.4)


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("smoothing", ["interpolated", "add-k"])
def test_distribution_is_normalised_and_matches_prob(char_data, n, smoothing):
    tok, train, valid = char_data
    model = NGramModel(n, tok.n_vocab, tok.eot_token, smoothing=smoothing).fit(train)
    for context in ([], valid[0][:5], valid[1][:40], [0, 0, 0]):
        probs = model.distribution(context)
        assert probs.sum() == pytest.approx(1.0) and (probs > 0).all()
        for token in range(tok.n_vocab):
            assert model.prob(context, token) == pytest.approx(probs[token])


def test_perplexity_matches_torch_cross_entropy(char_data):
    tok, train, valid = char_data
    model = NGramModel(3, tok.n_vocab, tok.eot_token).fit(train)
    story = valid[2]
    padded = [tok.eot_token, tok.eot_token] + story + [tok.eot_token]
    log_probs = torch.tensor(np.stack([np.log(model.distribution(padded[:i])) for i in range(2, len(padded))]))
    targets = torch.tensor(padded[2:])
    expected = F.cross_entropy(log_probs, targets).item()  # log-probs are valid logits
    result = model.evaluate([story])
    assert result["tokens"] == len(story) + 1
    assert result["cross_entropy"] == pytest.approx(expected, rel=1e-9)
    assert result["perplexity"] == pytest.approx(math.exp(expected))


def test_uniform_model_has_perplexity_vocab_size(char_data):
    tok, train, valid = char_data
    uniform = NGramModel(2, tok.n_vocab, tok.eot_token, lambdas=(1.0, 0.0, 0.0)).fit(train)
    assert uniform.evaluate(valid)["perplexity"] == pytest.approx(tok.n_vocab)


def test_longer_context_predicts_held_out_stories_better(char_data):
    tok, train, valid = char_data
    ppl = [NGramModel(n, tok.n_vocab, tok.eot_token).fit(train).evaluate(valid)["perplexity"] for n in (1, 2, 3, 4)]
    assert ppl[0] > ppl[1] > ppl[2] > ppl[3]


def test_sampling_distribution_matches_torch():
    p = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    for temperature in (0.5, 1.0, 2.0):
        expected = torch.softmax(torch.log(torch.tensor(p)) / temperature, dim=0).numpy()
        np.testing.assert_allclose(sampling_distribution(p, temperature), expected)
    values, indices = torch.topk(torch.tensor(p), 2)
    expected = np.zeros_like(p)
    expected[indices.numpy()] = (values / values.sum()).numpy()
    np.testing.assert_allclose(sampling_distribution(p, 1.0, top_k=2), expected)
    assert (sampling_distribution(np.array([0.25] * 4), top_k=2) > 0).sum() == 2  # ties: exactly k kept


def test_generation(char_data):
    tok, train, _ = char_data
    model = NGramModel(3, tok.n_vocab, tok.eot_token).fit(train)
    prompt = tok.encode_ordinary("Once upon a ")
    greedy = model.generate(prompt, 30, strategy="greedy")
    # greedy: each token is the argmax given what came before
    context = list(prompt)
    for token in greedy:
        assert token == int(np.argmax(model.distribution(context)))
        context.append(token)
    assert model.generate(prompt, 30, strategy="sample", top_k=1) == greedy
    a = model.generate(prompt, 50, temperature=0.8, top_k=10, seed=7)
    assert a == model.generate(prompt, 50, temperature=0.8, top_k=10, seed=7)
    assert a != model.generate(prompt, 50, temperature=0.8, top_k=10, seed=8)
    # empirical next-token frequencies follow the sampling distribution
    rng_tokens = [model.generate(prompt, 1, temperature=1.5, seed=s, stop_at_eot=False)[0] for s in range(3000)]
    probs = sampling_distribution(model.distribution(prompt), 1.5)
    top = int(np.argmax(probs))
    freq = rng_tokens.count(top) / 3000
    assert abs(freq - probs[top]) < 4 * math.sqrt(probs[top] * (1 - probs[top]) / 3000)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n="):
        NGramModel(0, 10, 0)
    with pytest.raises(ValueError, match="eot_token"):
        NGramModel(2, 10, 10)
    with pytest.raises(ValueError, match="lambdas"):
        NGramModel(2, 10, 0, lambdas=(0.5, 0.5))
    with pytest.raises(ValueError, match="smoothing"):
        NGramModel(2, 10, 0, smoothing="kneser-ney")
    model = NGramModel(2, 10, 0)
    with pytest.raises(ValueError, match="out of range"):
        model.fit([[11]])
    with pytest.raises(ValueError, match="temperature"):
        model.generate([1], 3, temperature=0)
    with pytest.raises(ValueError, match="strategy"):
        model.generate([1], 3, strategy="beam")


def test_unseen_fraction_by_hand():
    # eot = 0; train "1 2", held out "1 3": padded bigrams (0,1) (1,2) (2,0) vs (0,1) (1,3) (3,0)
    assert story_ngrams([[1, 2]], 2, 0) == [(0, 1), (1, 2), (2, 0)]
    assert unseen_fraction([[1, 2]], [[1, 3]], 2, 0) == pytest.approx(2 / 3)
    assert unseen_fraction([[1, 2]], [[1, 3]], 1, 0) == pytest.approx(1 / 3)  # only the token 3 is new
    assert unseen_fraction([[1, 2], [1, 3]], [[1, 3]], 3, 0) == 0


def test_fit_counts_every_order_like_a_brute_force_loop(char_data):
    _, train, _ = char_data
    model = NGramModel(3, vocab_size=max(max(s) for s in train) + 2, eot_token=max(max(s) for s in train) + 1)
    model.fit(train[:20]).fit(train[20:40])  # fitting twice adds up
    brute = [dict() for _ in range(3)]
    for ids in train[:40]:
        seq = [model.eot_token] * 2 + list(ids) + [model.eot_token]
        for i in range(2, len(seq)):
            for m in range(3):
                key = (tuple(seq[i - m : i]), seq[i])
                brute[m][key] = brute[m].get(key, 0) + 1
    for m in range(3):
        got = {(ctx, tok): c for ctx, counter in model.counts[m].items() for tok, c in counter.items()}
        assert got == brute[m]
        assert dict(model.totals[m]) == {ctx: sum(c for (x, _), c in brute[m].items() if x == ctx)
                                         for ctx in {x for x, _ in brute[m]}}


def test_predecessors_counts_distinct_left_neighbours():
    model = NGramModel(2, vocab_size=5, eot_token=4).fit([[0, 1, 2], [3, 1], [0, 1, 1]])
    assert model.predecessors(1) == 3  # after 0, 3 and 1
    assert model.predecessors(0) == 1  # only ever at a story start (after eot)
    assert model.predecessors(4) == 2  # the stories end with 2, 1 and 1
    with pytest.raises(ValueError, match="n >= 2"):
        NGramModel(1, vocab_size=5, eot_token=4).predecessors(0)
    with pytest.raises(ValueError, match="token=9"):
        model.predecessors(9)
