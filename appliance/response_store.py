"""Stored ``/v1/responses`` answers (``store: true``), per seat, for a retention period.

One row per response in the box's database (table ``responses``, schema step 3 in
``appliance.store``): the conversation the model read (input items, the instructions left
out: OpenAI does not carry them over), the Response object as it was answered, the seat
that created it and when. A later request of the same seat continues it with
``previous_response_id`` (its context plus its output become the history); another seat,
or a row past retention, reads as absent (404). Expired rows are deleted at startup, by
the box's periodic job and before every write. Every method blocks: call it off the loop.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.errors import ResponseNotFoundError
from appliance.store import Store
from storage.db import immediate

DAY_S = 86_400.0


@dataclass(frozen=True)
class StoredResponse:
    """One stored response: what the model read and what it answered."""

    id: str
    seat_id: int
    created_at: float
    context: list[dict[str, Any]]
    response: dict[str, Any]

    def history(self) -> list[dict[str, Any]]:
        """The conversation a continuation starts from: the context, then the output."""
        return [*self.context, *self.response.get("output", ())]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class ResponseStore:
    """The ``responses`` table: put, get and delete per seat; expire by age."""

    def __init__(self, store: Store, retention_days: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.retention_s = retention_days * DAY_S
        self.clock = clock

    def _cutoff(self, now: float | None) -> float:
        return (self.clock() if now is None else now) - self.retention_s

    def put(self, seat_id: int, response: dict[str, Any], context: list[dict[str, Any]]
            ) -> None:
        """Store ``response`` (its ``id`` and ``created_at``) with the ``context`` it read;
        expired rows go first."""
        row = [response["id"], seat_id, float(response["created_at"]), _dumps(context),
               _dumps(response)]
        with self.store.lock, immediate(self.store.db):
            self.expire()
            self.store.db.execute("INSERT INTO responses (id, seat_id, created_at, context, "
                                  "response) VALUES (?, ?, ?, ?, ?)", row)

    def get(self, seat_id: int, response_id: str, now: float | None = None) -> StoredResponse:
        """The seat's unexpired response; ResponseNotFoundError otherwise (another seat's
        response is not found either: its existence is not disclosed)."""
        with self.store.lock:
            row = self.store.db.execute(
                "SELECT id, seat_id, created_at, context, response FROM responses "
                "WHERE id = ? AND seat_id = ? AND created_at >= ?",
                [response_id, seat_id, self._cutoff(now)]).fetchone()
        if row is None:
            raise ResponseNotFoundError(response_id)
        return StoredResponse(row[0], row[1], row[2], json.loads(row[3]), json.loads(row[4]))

    def delete(self, seat_id: int, response_id: str) -> None:
        """Delete the seat's response; ResponseNotFoundError if it has none of that id."""
        with self.store.lock, immediate(self.store.db):
            cur = self.store.db.execute(
                "DELETE FROM responses WHERE id = ? AND seat_id = ? AND created_at >= ?",
                [response_id, seat_id, self._cutoff(None)])
        if cur.rowcount == 0:
            raise ResponseNotFoundError(response_id)

    def expire(self, now: float | None = None) -> int:
        """Delete every response older than the retention period; return how many."""
        with self.store.lock, immediate(self.store.db):
            cur = self.store.db.execute("DELETE FROM responses WHERE created_at < ?",
                                        [self._cutoff(now)])
        return cur.rowcount
