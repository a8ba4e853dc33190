"""Signed offline update bundles with A/B release slots, health-checked switch and rollback.

Library entry point: ``firmware.apply.Updater`` (``apply``, ``inspect``, ``status``,
``rollback``, ``history``, ``recover``), with an injected ``ServiceManager``
(``firmware.service``), ``HealthCheck`` (``firmware.health``), trusted key map, ``audit`` and
``progress`` callbacks. Vendor side: ``firmware.build``. Boot counter: ``firmware.boot``.
CLI: ``appliance-update`` (``firmware.cli``).
"""
