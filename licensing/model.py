"""Licence data: the frozen ``Licence`` object, its JSON form, and safe JSON loading.

A licence file is ``{"licence": {...}, "signature": {"kid", "alg", "sig"}}``; the signature
covers ``canonical_json(licence)``. Parsing here is strict (every field typed, unknown
fields refused) so that any change to a signed document is either a format error or a
signature error, never silently ignored.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from licensing.errors import FormatError

LICENCE_FORMAT = "appliance-licence/1"
REQUEST_FORMAT = "appliance-activation-request/1"
FLEET_REQUEST_FORMAT = "appliance-fleet-activation-request/1"
RECEIPT_FORMAT = "appliance-deactivation/1"
DAY = 86_400
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Limits:
    """Bounds on documents read from disk or from a customer/vendor."""

    max_bytes: int = 64 * 1024
    max_depth: int = 8
    max_globs: int = 256
    max_seats: int = 100_000
    max_boxes: int = 64  # boxes in one fleet licence
    eval_max_seats: int = 3
    eval_max_days: int = 30


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise FormatError(f"duplicate JSON key {k!r}")
        out[k] = v
    return out


def _text(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800"
        raise FormatError(f"JSON string is not valid Unicode ({exc.reason})") from exc


def _depth(obj: Any, limit: int, level: int = 1) -> None:
    """Refuse nesting deeper than ``limit`` and strings that are not valid Unicode."""
    if level > limit:
        raise FormatError(f"JSON is nested deeper than {limit} levels")
    if isinstance(obj, str):
        _text(obj)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _text(k)
            _depth(v, limit, level + 1)
    elif isinstance(obj, list):
        for v in obj:
            _depth(v, limit, level + 1)


def load_json(data: bytes, limits: Limits = Limits(), what: str = "document") -> dict[str, Any]:
    """Parse ``data`` as a JSON object within ``limits``; raise FormatError otherwise."""
    if not isinstance(data, bytes | bytearray):
        raise FormatError(f"{what} must be bytes")
    if len(data) > limits.max_bytes:
        raise FormatError(f"{what} is {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        obj = json.loads(bytes(data).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except FormatError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise FormatError(f"{what} must be a JSON object, not {type(obj).__name__}")
    _depth(obj, limits.max_depth)
    return obj


def _get(d: dict[str, Any], key: str, typ: type | tuple[type, ...], what: str) -> Any:
    if key not in d:
        raise FormatError(f"{what}: missing field {key!r}")
    value = d[key]
    if (typ is int and isinstance(value, bool)) or not isinstance(value, typ):
        raise FormatError(f"{what}: field {key!r} has the wrong type")
    return value


def _strs(value: Any, key: str, what: str, limit: int) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > limit:
        raise FormatError(f"{what}: field {key!r} must be a list of at most {limit} strings")
    if not all(isinstance(v, str) and 0 < len(v) <= 128 for v in value):
        raise FormatError(f"{what}: field {key!r} must hold non-empty short strings")
    return tuple(value)


def check_keys(d: dict[str, Any], allowed: set[str], what: str) -> None:
    """Refuse fields outside ``allowed`` (a typo or tampering, not a forward extension)."""
    extra = set(d) - allowed
    if extra:
        raise FormatError(f"{what}: unknown field(s) {sorted(extra)}")


@dataclass(frozen=True)
class Entitlements:
    """Which models (names or globs) and features a licence covers."""

    models: tuple[str, ...]
    features: tuple[str, ...]

    def allows_model(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.models)

    def allows_feature(self, feature: str) -> bool:
        return "*" in self.features or feature in self.features


@dataclass(frozen=True)
class Licence:
    """A verified licence. Times are UTC epoch seconds."""

    licence_id: str
    customer: str
    seats: int
    entitlements: Entitlements
    valid_from: int
    expires_at: int
    grace_days: int
    issued_at: int
    kid: str
    fingerprint: dict[str, Any] = field(compare=False)
    evaluation: bool = False
    box_key: str = ""
    request_nonce: str = ""
    serial: int = 0  # the vendor's issue counter; with issued_at it orders renewals
    #: a fleet licence: the other boxes it may run on, each ``{"fingerprint", "box_key"}``
    #: from their activation requests (the head is ``fingerprint``/``box_key`` above) ...
    boxes: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    #: ... and how many boxes the fleet may have in all, head included (0: the head plus
    #: those listed). Boxes beyond those listed are bound when they first join.
    max_boxes: int = 0

    @property
    def fleet_size(self) -> int:
        """How many boxes, head included, this licence may run on (1: a single box)."""
        return self.max_boxes or 1 + len(self.boxes)

    @property
    def order(self) -> tuple[int, int]:
        """Newer licences compare greater: (issued_at, serial)."""
        return (self.issued_at, self.serial)

    @property
    def grace_ends_at(self) -> int:
        return self.expires_at + self.grace_days * DAY

    def to_json(self) -> dict[str, Any]:
        """The signed body, exactly as issued."""
        return {
            "format": LICENCE_FORMAT,
            "licence_id": self.licence_id,
            "customer": self.customer,
            "seats": self.seats,
            "models": list(self.entitlements.models),
            "features": list(self.entitlements.features),
            "valid_from": self.valid_from,
            "expires_at": self.expires_at,
            "grace_days": self.grace_days,
            "issued_at": self.issued_at,
            "kid": self.kid,
            "fingerprint": self.fingerprint,
            "evaluation": self.evaluation,
            "box_key": self.box_key,
            "request_nonce": self.request_nonce,
        } | ({"serial": self.serial} if self.serial else {}) \
          | ({"boxes": list(self.boxes)} if self.boxes else {}) \
          | ({"max_boxes": self.max_boxes} if self.max_boxes else {})

    @classmethod
    def from_json(cls, d: dict[str, Any], limits: Limits = Limits()) -> Licence:
        """Build from a signed body; FormatError on any missing, extra or mistyped field."""
        what = "licence"
        check_keys(d, set(cls.template_keys()), what)
        if _get(d, "format", str, what) != LICENCE_FORMAT:
            raise FormatError(f"licence format is not {LICENCE_FORMAT!r}")
        licence_id = _get(d, "licence_id", str, what)
        if not ID_RE.match(licence_id):
            raise FormatError("licence: licence_id has invalid characters")
        seats = _get(d, "seats", int, what)
        if not 1 <= seats <= limits.max_seats:
            raise FormatError(f"licence: seats must be 1..{limits.max_seats}")
        times = {k: _get(d, k, int, what) for k in ("valid_from", "expires_at", "issued_at")}
        if times["expires_at"] <= times["valid_from"]:
            raise FormatError("licence: expires_at must be after valid_from")
        grace = _get(d, "grace_days", int, what)
        if not 0 <= grace <= 365:
            raise FormatError("licence: grace_days must be 0..365")
        fp = _get(d, "fingerprint", dict, what)
        serial = _get(d, "serial", int, what) if "serial" in d else 0
        if not 0 <= serial < 2**63:
            raise FormatError("licence: serial must be a non-negative 64-bit integer")
        boxes, max_boxes = _fleet(d, limits, what)
        return cls(
            licence_id=licence_id,
            customer=_get(d, "customer", str, what),
            seats=seats,
            entitlements=Entitlements(
                models=_strs(d.get("models"), "models", what, limits.max_globs),
                features=_strs(d.get("features"), "features", what, limits.max_globs),
            ),
            valid_from=times["valid_from"],
            expires_at=times["expires_at"],
            grace_days=grace,
            issued_at=times["issued_at"],
            kid=_get(d, "kid", str, what),
            fingerprint=fp,
            evaluation=_get(d, "evaluation", bool, what),
            box_key=_get(d, "box_key", str, what),
            request_nonce=_get(d, "request_nonce", str, what),
            serial=serial,
            boxes=boxes,
            max_boxes=max_boxes,
        )

    @staticmethod
    def template_keys() -> tuple[str, ...]:
        return (
            "format", "licence_id", "customer", "seats", "models", "features", "valid_from",
            "expires_at", "grace_days", "issued_at", "kid", "fingerprint", "evaluation",
            "box_key", "request_nonce", "serial", "boxes", "max_boxes",
        )  # fmt: skip


def _fleet(d: dict[str, Any], limits: Limits, what: str
           ) -> tuple[tuple[dict[str, Any], ...], int]:
    """The optional fleet fields: ``boxes`` (each ``{"fingerprint": {...}, "box_key": str}``;
    the fingerprints are checked in ``licensing.fleet``) and ``max_boxes``."""
    boxes = _get(d, "boxes", list, what) if "boxes" in d else []
    if not boxes and "boxes" in d:
        raise FormatError("licence: boxes, when present, lists at least one box")
    if len(boxes) >= limits.max_boxes:
        raise FormatError(f"licence: a fleet has at most {limits.max_boxes} boxes")
    for box in boxes:
        if not isinstance(box, dict) or set(box) != {"fingerprint", "box_key"} \
                or not isinstance(box["fingerprint"], dict) \
                or not isinstance(box["box_key"], str):
            raise FormatError("licence: each of boxes must be {fingerprint, box_key}")
    max_boxes = _get(d, "max_boxes", int, what) if "max_boxes" in d else 0
    if "max_boxes" in d and not 1 + len(boxes) <= max_boxes <= limits.max_boxes:
        raise FormatError(f"licence: max_boxes must be {1 + len(boxes)}..{limits.max_boxes} "
                          "(the head and every box listed count)")
    return tuple(boxes), max_boxes
