"""Pure formatting helpers shared by the screens (no Textual, no I/O)."""

from __future__ import annotations

import time


def size(n: int | None) -> str:
    """Bytes as a short human size (binary units)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def size_or_label(value: int | float | str | None) -> str:
    """A model's ``size``: bytes on disk as a number, or a label the box chose ("135M")."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return size(int(value))
    return str(value) if value else "-"


def count(value: int | float | None) -> str:
    """A counter the box may send as a float (Prometheus sums), shown as an integer."""
    return str(int(value or 0))


def when(ts: float | str | None) -> str:
    """Epoch seconds as a UTC date and time, or '-' (a string is shown as the box sent it)."""
    if not ts:
        return "-"
    if isinstance(ts, str):
        return ts.replace("T", " ")[:19]
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) + "Z"


def duration(seconds: float | None) -> str:
    """Seconds as '3d 4h', '2h 5m', '4m 2s'."""
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {s}s"


def latency(seconds: float | None) -> str:
    """A latency in ms below one second, else in seconds."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def licence_line(licence: dict) -> str:
    """One line: state, days left (or grace days left) and seats used."""
    state = str(licence.get("state", "missing")).upper()
    parts = [state]
    if licence.get("state") == "grace" and licence.get("grace_days_left") is not None:
        parts.append(f"{licence['grace_days_left']} grace days left")
    elif licence.get("days_left") is not None:
        parts.append(f"{licence['days_left']} days left")
    if licence.get("seats"):
        parts.append(f"seats {licence.get('seats_used', 0)}/{licence['seats']}")
    return " · ".join(parts)
