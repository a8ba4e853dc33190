"""Clock-tamper and restored-state detection.

Trusted time is a high-water mark of UTC epoch seconds (time zones never matter). It is
raised on every start and on every periodic ``tick`` to ``max(wall clock, stored mark, this
process's previous mark + monotonic seconds elapsed since)``, so trusted time keeps moving
even if the wall clock is frozen (several processes may tick; each extrapolates only from
its own last observation, so they never push the mark ahead of real time). If the wall
clock is ever more than ``tolerance`` behind the mark, the box locks inference until an
admin acknowledges (``acknowledge``) or a fresh activation is imported.

A monotonic counter is mirrored in two places: the ``licensing_clock`` table in the box's
database and the ``clock.state`` file in the data directory. Every tick bumps both; if they
disagree at the next tick, one of them was restored from an older copy -> locked. The mark
is also mirrored in the trusted record outside the data directory (``licensing.trust``), and
that copy is a floor: wiping ``data/`` and setting the clock back still locks.

Trusted time never moves backwards. An acknowledgement (or a fresh activation) clears a lock
but keeps the mark; it records how far the wall clock runs behind (``skew``), and trusted
time keeps advancing from the mark at the wall clock's pace until the wall clock catches up.
Licence expiry and grace are judged on trusted time, ``max(wall clock, mark)``.

What IS detected:
- the clock set back by more than the tolerance relative to the highest time seen (at any
  start or tick), including several small set-backs that add up, and a wall clock frozen
  or slowed while the box runs for longer than the tolerance;
- the database copied back from an older backup (or the state file alone), or either one
  deleted while the other still exists.
What is NOT detected:
- the clock set back before the box first ran, or set back by less than the tolerance;
- time that passes while the box is switched off, if the clock is then set back to just
  after the last shutdown (a powered-off box has no trusted time source);
- the clock set *forward* (harmless to the vendor: it only shortens the licence);
- the database, the state file AND the trusted record outside ``data/`` restored together
  from one consistent snapshot (a whole-disk snapshot);
- an attacker with root who edits every copy consistently or patches this code.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import sqlite_utils

from licensing import schema
from licensing.errors import StateError
from licensing.trust import TrustStore
from storage.db import immediate
from storage.files import atomic_write

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 24 * 3600
TABLE = "licensing_clock"


@dataclass(frozen=True)
class ClockState:
    """Persisted clock facts; ``locked`` holds a reason or is empty."""

    high_water: int
    counter: int
    locked: str = ""
    skew: int = 0  # acknowledged seconds the wall clock runs behind trusted time


@dataclass(frozen=True)
class ClockVerdict:
    """Result of one tick: the new state to persist and whether it newly locked."""

    state: ClockState
    newly_locked: bool


def advance(
    state: ClockState | None,
    now: int,
    tolerance: int,
    floor: int = 0,
    file_counter: int | None = None,
) -> ClockVerdict:
    """Pure tick: compare ``now`` with the mark and the two counters; return the next state.

    ``floor`` is this process's previous mark plus monotonic seconds elapsed since (0 at start).
    ``file_counter`` is the counter read from the state file (``None`` if it is missing).
    """
    if state is None:
        if file_counter is not None:
            reason = "licensing state file exists but the database has no clock record (restored?)"
            return ClockVerdict(ClockState(now, file_counter + 1, reason), True)
        return ClockVerdict(ClockState(high_water=now, counter=1), False)
    reason = state.locked
    if not reason and file_counter != state.counter:
        reason = (
            f"restored state detected: database counter {state.counter} but state file "
            f"counter {file_counter if file_counter is not None else 'missing'}"
        )
    mark = max(state.high_water, floor)
    skew = state.skew if now < mark - tolerance else 0  # the wall clock caught up: drop it
    seen = now + skew
    if not reason and seen < mark - tolerance:
        reason = (
            f"clock went back {(mark - seen) / 3600:.1f} h behind trusted time "
            f"(tolerance {tolerance / 3600:.1f} h)"
        )
    new = ClockState(max(mark, seen), state.counter + 1, reason, skew)
    return ClockVerdict(new, bool(reason) and not state.locked)


class ClockGuard:
    """I/O driver: keeps ``ClockState`` in the database and mirrors the counter in a file."""

    def __init__(
        self,
        db: sqlite_utils.Database,
        state_path: Path,
        tolerance: int = DEFAULT_TOLERANCE,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        trust: TrustStore | None = None,
    ) -> None:
        self.db, self.state_path, self.tolerance = db, Path(state_path), tolerance
        self._clock, self._mono, self.trust = clock, monotonic, trust
        self._mirrored = 0  # last mark written to the trusted record
        self._last: tuple[float, float] | None = None  # (monotonic, mark) at our last tick

    def migrate(self) -> None:
        schema.migrate(self.db)

    def _load_db(self) -> ClockState | None:
        row = self.db.execute(
            f"SELECT high_water, counter, locked, skew FROM {TABLE}").fetchone()
        if row is None:
            return None
        return ClockState(int(row[0]), int(row[1]), row[2] or "", int(row[3] or 0))

    def _load_file(self) -> int | None:
        try:
            data = json.loads(self.state_path.read_text())
            return int(data["counter"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(f"clock state file {self.state_path} is unreadable: {exc}") from exc

    def _save(self, state: ClockState) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO {TABLE} (id, high_water, counter, locked, skew)"
            " VALUES (1, ?, ?, ?, ?)",
            [state.high_water, state.counter, state.locked, state.skew],
        )
        payload = {"counter": state.counter, "high_water": state.high_water}
        atomic_write(self.state_path, json.dumps(payload).encode(), mode=0o600)

    def state(self) -> ClockState | None:
        """Current persisted state without ticking."""
        self.migrate()
        return self._load_db()

    def tick(self) -> ClockState:
        """Record the time now (call at start and periodically); return the new state."""
        self.migrate()
        now, mono = int(self._clock()), self._mono()
        floor = 0.0 if self._last is None else self._last[1] + max(0.0, mono - self._last[0])
        floor = max(floor, float(self._trusted_mark()))
        with immediate(self.db):
            verdict = advance(
                self._load_db(), now, self.tolerance, int(floor), self._load_file_safe()
            )
            self._save(verdict.state)
        self._last = (mono, max(float(verdict.state.high_water), floor))
        self._mirror(verdict.state.high_water)
        if verdict.newly_locked:
            log.warning("licensing: inference locked: %s", verdict.state.locked)
        return verdict.state

    def _load_file_safe(self) -> int | None:
        try:
            return self._load_file()
        except StateError as exc:
            log.warning("%s", exc)
            return -1

    def _trusted_mark(self) -> int:
        return self.trust.load().high_water if self.trust is not None else 0

    def _mirror(self, mark: int) -> None:
        """Copy the mark to the trusted record (at most once a minute; it only grows)."""
        if self.trust is None or mark < self._mirrored + 60:
            return
        self.trust.update(lambda r: replace(r, high_water=max(r.high_water, mark)))
        self._mirrored = mark

    def acknowledge(self, why: str = "acknowledged") -> ClockState:
        """Clear a lock. Trusted time stays where it is: the wall clock is accepted as
        running ``skew`` seconds behind it, never the other way round."""
        self.migrate()
        now = int(self._clock())
        floor = self._trusted_mark()
        with immediate(self.db):
            old = self._load_db()
            counter = max(old.counter if old else 0, self._load_file_safe() or 0) + 1
            if old and old.locked:
                log.warning("licensing: clock lock cleared (%s): %s", why, old.locked)
            mark = max(old.high_water if old else 0, floor, now)
            new = ClockState(high_water=mark, counter=counter, skew=max(0, mark - now))
            self._save(new)
        self._last = (self._mono(), float(new.high_water))
        self._mirror(new.high_water)
        return replace(new)
