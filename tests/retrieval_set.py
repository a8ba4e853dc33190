"""The fixed retrieval set in ``tests/fixtures/retrieval.json`` and its score (recall@1):
shared by the retrieval test and ``bench/embeddings.py``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

SET = Path(__file__).resolve().parent / "fixtures" / "retrieval.json"
Embed = Callable[[Sequence[str]], Sequence[Sequence[float]]]


def load() -> tuple[list[str], list[str], list[str], list[int]]:
    """(passage ids, passages, queries, index of each query's relevant passage)."""
    data = json.loads(SET.read_text(encoding="utf-8"))
    ids = sorted(data["passages"])
    passages = [data["passages"][i] for i in ids]
    queries = [q["q"] for q in data["queries"]]
    relevant = [ids.index(q["p"]) for q in data["queries"]]
    return ids, passages, queries, relevant


def recall_at_1(embed: Embed) -> float:
    """Share of queries whose nearest passage (cosine) is the relevant one."""
    _, passages, queries, relevant = load()
    p = np.asarray(embed(passages), dtype=np.float64)
    q = np.asarray(embed(queries), dtype=np.float64)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    best = (q @ p.T).argmax(axis=1)
    return float(np.mean(best == np.asarray(relevant)))
