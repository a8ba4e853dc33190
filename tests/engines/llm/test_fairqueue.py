"""FairQueue: seats share slots by weight, keep their own order, batch seats never starve."""

from __future__ import annotations

from engines.llm.fairqueue import FairQueue


def drain(q: FairQueue, n: int | None = None) -> list:
    out = []
    while len(q) and (n is None or len(out) < n):
        out.append(q.pop())
    return out


def test_a_busy_seat_does_not_hold_everyone_back() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(64):
        q.push(f"A{i}", "A")
    q.push("B0", "B")
    q.push("C0", "C")
    first = drain(q, 3)
    assert first == ["A0", "B0", "C0"]
    rest = drain(q)
    assert rest == [f"A{i}" for i in range(1, 64)]  # a seat's own order is kept


def test_weights_share_in_proportion() -> None:
    q: FairQueue[str] = FairQueue()
    for i in range(30):
        q.push(f"A{i}", "A", weight=2)
        q.push(f"B{i}", "B", weight=1)
    served = drain(q, 30)
    assert served.count("A0") == 1
    a = sum(x.startswith("A") for x in served)
    assert 19 <= a <= 21  # 2:1


def test_background_seats_wait_for_interactive_ones_but_are_served_when_idle() -> None:
    q: FairQueue[str] = FairQueue()
    q.push("job0", "batch", background=True)
    q.push("job1", "batch", background=True)
    q.push("chat0", "alice")
    assert q.pop() == "chat0"
    assert q.pop() == "job0"  # nobody interactive waiting: the batch seat is not starved
    q.push("chat1", "alice")
    assert q.pop() == "chat1"
    assert q.pop() == "job1" and q.pop() is None and len(q) == 0


def test_ineligible_seats_are_skipped_and_removal_keeps_counts() -> None:
    q: FairQueue[int] = FairQueue()
    for i in range(4):
        q.push(i, "A")
    q.push(10, "B")
    assert q.pop(lambda seat: seat != "A") == 10
    assert q.pop(lambda seat: seat != "A") is None
    assert q.remove_where(lambda x: x % 2 == 1) == [1, 3]
    assert len(q) == 2 and q.waiting() == {"A": 2}
    assert drain(q) == [0, 2]
