"""A licence for a fleet: which boxes may join the head, decided without I/O.

A fleet licence is bound to the head like any licence (``fingerprint``, ``box_key``) and
also names the other boxes it may run on (``boxes``: each box's fingerprint and public box
key, from the activation requests the customer bundled into one fleet request), and may
allow more boxes in all (``max_boxes``) that are bound to the first machines that join.
Seats are one total across the fleet: the head holds the one seat table.

A box asks to join with a *join request* signed by its own box key (``box.key``, never
copied off the box), naming its fingerprint; ``verify_join`` checks the signature and its
age, ``admit_box`` checks it against the licence and the boxes already bound. Copying the
licence or a request from another box does not help: only the box holding the private key
can sign as that box.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from licensing import crypto
from licensing.errors import BoxNotLicensed, FormatError
from licensing.fingerprint import Fingerprint, FingerprintMatch, check_strength
from licensing.model import Licence, Limits, check_keys
from licensing.verify import check_signature, sign_document, split_signed

JOIN_FORMAT = "appliance-fleet-join/1"
JOIN_MAX_AGE_S = 600  # a join request older (or newer) than this, by the head's clock, is stale
BOX_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class BoxIdentity:
    """One box as a licence or the head's bindings know it."""

    fingerprint: Fingerprint
    box_key: str

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint.to_json(), "box_key": self.box_key}


@dataclass(frozen=True)
class JoinClaim:
    """A verified join request: this box (name, machine, key) asks to join."""

    box: str
    identity: BoxIdentity
    created_at: int


@dataclass(frozen=True)
class Admission:
    """Why a box may join; ``bind``: record it now (it takes one of ``max_boxes``)."""

    how: str  # "listed", "bound" or "new"
    bind: bool
    fingerprint: FingerprintMatch


def licensed_boxes(licence: Licence) -> tuple[BoxIdentity, ...]:
    """The boxes a licence lists besides its head; FormatError if one is malformed."""
    out = []
    for entry in licence.boxes:
        key = entry["box_key"]
        if len(crypto.unb64(key)) != 32:
            raise FormatError("licence: a box_key in boxes is not an Ed25519 public key")
        out.append(BoxIdentity(check_strength(Fingerprint.from_json(entry["fingerprint"])), key))
    return tuple(out)


def compare(licensed: Fingerprint, presented: Fingerprint) -> FingerprintMatch:
    """Compare two fingerprints of (supposedly) one machine with the usual tolerance: one
    changed component of three or more. Different salts share nothing."""
    total = len(licensed.components)
    same_salt = hmac.compare_digest(licensed.salt, presented.salt)
    changed = tuple(sorted(
        name for name, value in licensed.components.items()
        if not same_salt or not hmac.compare_digest(value, presented.components.get(name, ""))))
    allowed = 1 if total >= 3 else 0
    return FingerprintMatch(ok=len(changed) <= allowed, total=total,
                            matched=total - len(changed), changed=changed)


# --- join requests (the joining box) ----------------------------------------------------
def join_request(box: str, fingerprint: Fingerprint, key: crypto.SigningKey, now: int) -> bytes:
    """A join request for ``box``, signed with this box's key."""
    if not BOX_NAME_RE.match(box):
        raise FormatError("a box name uses letters, digits, '.', '_' and '-' (1..64)")
    body = {"format": JOIN_FORMAT, "box": box, "fingerprint": fingerprint.to_json(),
            "box_key": crypto.b64(key.public), "created_at": now,
            "nonce": secrets.token_hex(16)}
    return sign_document(body, "join", key)


def verify_join(data: bytes, now: int, limits: Limits = Limits()) -> JoinClaim:
    """Check a join request's form, its signature by the key it names, and its age."""
    body, sig = split_signed(data, "join", limits)
    check_keys(body, {"format", "box", "fingerprint", "box_key", "created_at", "nonce"},
               "join request")
    if body.get("format") != JOIN_FORMAT:
        raise FormatError(f"not a fleet join request (format is not {JOIN_FORMAT!r})")
    box, key, created = body.get("box"), body.get("box_key"), body.get("created_at")
    if not isinstance(box, str) or not BOX_NAME_RE.match(box):
        raise FormatError("join request: box must be a short name")
    if not isinstance(key, str) or len(crypto.unb64(key)) != 32:
        raise FormatError("join request: box_key is not an Ed25519 public key")
    if not isinstance(created, int) or isinstance(created, bool):
        raise FormatError("join request: created_at must be an integer")
    fp = check_strength(Fingerprint.from_json(body.get("fingerprint")))
    raw = crypto.unb64(key)
    check_signature(body, sig, {crypto.key_id(raw): raw})
    if abs(now - created) > JOIN_MAX_AGE_S:
        raise BoxNotLicensed(f"the join request of {box} was made {now - created:+d}s from "
                             "the head's clock; make a new one (and check both clocks)")
    return JoinClaim(box, BoxIdentity(fp, key), created)


# --- the head's decision ----------------------------------------------------------------
def admit_box(licence: Licence, claim: JoinClaim, bound: Sequence[BoxIdentity]) -> Admission:
    """May ``claim``'s box join the fleet of ``licence``, given the boxes ``bound`` to it
    earlier? An Admission, or BoxNotLicensed naming why not; pure."""
    who, lid = claim.box, licence.licence_id
    if licence.evaluation:
        raise BoxNotLicensed(f"an evaluation licence covers one box: {who} cannot join; "
                             "import a fleet licence on the head")
    if hmac.compare_digest(claim.identity.box_key, licence.box_key):
        raise BoxNotLicensed(f"{who} holds the head's own box key; a head does not join "
                             "its own fleet")
    for how, known in (("listed", licensed_boxes(licence)), ("bound", tuple(bound))):
        for box in known:
            if not hmac.compare_digest(box.box_key, claim.identity.box_key):
                continue
            fp = compare(box.fingerprint, claim.identity.fingerprint)
            if not fp.ok:
                raise BoxNotLicensed(f"{who} has the key of a box licence {lid} names, but "
                                     f"runs on another machine ({fp.describe()})")
            return Admission(how, bind=False, fingerprint=fp)
    size = licence.fleet_size
    if size == 1:
        raise BoxNotLicensed(f"licence {lid} covers one box (the head): {who} cannot join; "
                             "ask the vendor for a fleet licence naming it")
    taken = 1 + len(licence.boxes) + len(bound)
    if taken >= size:
        raise BoxNotLicensed(
            f"licence {lid} does not list {who} among its boxes" if not licence.max_boxes
            else f"licence {lid} allows {size} boxes and all are bound to other machines: "
                 f"{who} cannot join")
    n = len(claim.identity.fingerprint.components)
    return Admission("new", bind=True, fingerprint=FingerprintMatch(True, n, n, ()))
