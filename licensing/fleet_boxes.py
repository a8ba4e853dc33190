"""The head's record of boxes bound to its fleet licence, and the join decision over it.

``licensing.fleet`` decides; this module reads the boxes bound so far and records a newly
bound one in the same IMMEDIATE transaction, so two boxes joining at once cannot both take
the last free place. Bindings belong to one licence id: a renewal starts them afresh.
"""

from __future__ import annotations

import json

import sqlite_utils

from licensing import schema
from licensing.fingerprint import Fingerprint
from licensing.fleet import Admission, BoxIdentity, JoinClaim, admit_box
from licensing.model import Licence
from storage.db import immediate


class FleetBoxes:
    """Boxes bound to fleet licences, in the box's database."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        schema.migrate(db)

    def bound(self, licence_id: str) -> list[BoxIdentity]:
        rows = self.db.execute(
            "SELECT box_key, fingerprint FROM fleet_boxes WHERE licence_id = ?"
            " ORDER BY bound_at, box", [licence_id]).fetchall()
        return [BoxIdentity(Fingerprint.from_json(json.loads(fp)), key) for key, fp in rows]

    def names(self, licence_id: str) -> list[str]:
        """The bound boxes' names, in the order they joined."""
        rows = self.db.execute("SELECT box FROM fleet_boxes WHERE licence_id = ?"
                               " ORDER BY bound_at, box", [licence_id]).fetchall()
        return [r[0] for r in rows]

    def admit(self, licence: Licence, claim: JoinClaim, now: int) -> Admission:
        """Decide on ``claim`` (BoxNotLicensed if refused); bind it when it takes a place."""
        with immediate(self.db):
            admission = admit_box(licence, claim, self.bound(licence.licence_id))
            if admission.bind:
                self.db.execute(
                    "INSERT INTO fleet_boxes (licence_id, box_key, box, fingerprint, bound_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [licence.licence_id, claim.identity.box_key, claim.box,
                     json.dumps(claim.identity.fingerprint.to_json(), sort_keys=True), now])
        return admission
