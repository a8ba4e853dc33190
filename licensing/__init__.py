"""Seat licensing for the appliance: signed licences, offline activation, seats and keys.

Used by the API through ``licensing.guard``:

- ``LicenseGuard(data_dir, db)``: ``check(api_key, model, feature) -> SeatContext`` on every
  ``/v1/*`` request, ``slot(ctx)`` for per-seat limits, ``record_usage(ctx, ...)``,
  ``status()``, and audited admin actions (seats, keys, import, ack-clock, deactivate).
- ``bootstrap_evaluation(data_dir, db)``: first start without a licence.
- ``AuditLog(db)``: the hash-chained audit log shared with firmware updates.

Pure parts (``model``, ``verify``, ``fingerprint.match``, ``clock.advance``) take bytes and
``now``; the drivers (``activation``, ``seats``, ``clock.ClockGuard``, ``guard``) do the
I/O. Every error is a ``licensing.errors.LicenseError``. The package never imports
fastapi, textual or the appliance.
"""
