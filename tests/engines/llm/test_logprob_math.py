"""The pure logprob helpers: a proper log-distribution, the likeliest first, ties stable."""

from __future__ import annotations

import math

import numpy as np

from engines.llm.logprobs import log_softmax, token_logprob, top_tokens


def test_log_softmax_is_a_log_distribution_even_for_huge_logits() -> None:
    for logits in (np.array([1.0, 2.0, 3.0], dtype=np.float32),
                   np.array([1000.0, 999.0, -1000.0], dtype=np.float32)):
        lp = log_softmax(logits)
        assert (lp <= 0).all()
        assert math.isclose(float(np.exp(lp).sum()), 1.0, rel_tol=1e-12)
    assert log_softmax(np.array([0.0, 0.0]))[0] == math.log(0.5)


def test_top_tokens_are_sorted_ties_by_id_and_bounded() -> None:
    lp = log_softmax(np.array([0.5, 2.0, 2.0, -1.0, 1.0]))
    assert [t for t, _ in top_tokens(lp, 3)] == [1, 2, 4]
    assert [t for t, _ in top_tokens(lp, 99)] == [1, 2, 4, 0, 3]
    assert top_tokens(lp, 0) == []
    values = [v for _, v in top_tokens(lp, 5)]
    assert values == sorted(values, reverse=True)


def test_token_logprob_names_the_chosen_token_and_its_alternatives() -> None:
    lp = log_softmax(np.array([3.0, 1.0, 2.0]))
    entry = token_logprob(lp, 1, 2, lambda t: f"<{t}>".encode())
    assert (entry.token, entry.piece) == (1, b"<1>")
    assert entry.logprob == float(lp[1])
    assert [(t.token, t.piece) for t in entry.top] == [(0, b"<0>"), (2, b"<2>")]
    assert all(t.top == () for t in entry.top)
