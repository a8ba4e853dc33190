"""The head box's connection to its fleet: Ray driver, Serve, one deployment per model.

``FleetClient`` is created by the app's lifespan when fleet mode is on and hung on
``Runtime.fleet``; it is the only place that calls ``ray.init`` (Ray keeps one driver
per process: that is Ray's global, not ours) and ``serve.run``. The box's FastAPI app
stays the ingress: it serves the API on its own port and reaches replicas through Serve
handles, so seats, keys, licence, usage ledger and audit stay in the head's store and no
Serve HTTP proxy sits in the request path.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from engines.errors import ModelLoadError
from fleet.errors import FleetUnavailableError
from fleet.load import ReplicaLoad
from fleet.node import environment

log = logging.getLogger(__name__)

APP_PREFIX = "model-"
NAMESPACE = "appliance"


def app_name(model: str) -> str:
    return APP_PREFIX + model


def _states(replica_states: Any) -> dict[str, int]:
    """Serve's replica counts by state, keyed by the state's name."""
    return {str(getattr(k, "value", k)): int(v) for k, v in (replica_states or {}).items()}


class FleetClient:
    """Driver of the fleet from the head's API process."""

    def __init__(self, address: str, token_path: Path, *, connect_timeout: float = 60.0
                 ) -> None:
        host = address.rsplit(":", 1)[0]
        # before Ray is imported: it reads the auth mode once, when it loads its config
        os.environ.update(environment(token_path, host))
        try:
            import ray
            from ray import serve
        except ImportError as exc:
            raise FleetUnavailableError(
                "fleet mode needs Ray: install the fleet extra (pip install '.[fleet]')"
            ) from exc
        self._ray, self._serve = ray, serve
        self.address = address
        self.load = ReplicaLoad()  # filled by the head's fleet engines
        self.channels: dict[str, str] = {}  # model -> how its tokens stream (the loader's)
        deadline = time.monotonic() + connect_timeout
        while True:
            try:
                ray.init(address=address, namespace=NAMESPACE, _node_ip_address=host,
                         logging_level=logging.WARNING, log_to_driver=False,
                         ignore_reinit_error=True)
                break
            except Exception as exc:  # head still starting
                if time.monotonic() > deadline:
                    raise FleetUnavailableError(
                        f"cannot reach the fleet head at {address}: {exc}") from exc
                time.sleep(1.0)
        serve.start(http_options={"location": "NoServer"})
        log.info("connected to the fleet at %s (%d nodes)", address, len(self.nodes()))

    # --- deployments ----------------------------------------------------------------------
    def deploy(self, model: str, deployment: Any, *args: Any, **kwargs: Any) -> Any:
        """Run (or update) the Serve application of ``model``; return its handle.

        Replicas that fail to start (a missing library or provider on the box they were
        placed on) raise ``ModelLoadError`` with the replica's own last error line, and the
        application is removed instead of retrying for ever.
        """
        try:
            return self._serve.run(deployment.bind(*args, **kwargs), name=app_name(model),
                                   route_prefix=None)
        except RuntimeError as exc:
            reason = self._failure(model) or str(exc)
            self.undeploy(model)
            raise ModelLoadError(f"the replicas of {model} did not start: {reason}") from exc

    def _failure(self, model: str) -> str | None:
        """The last error line Serve recorded for ``model``'s deployment, if any."""
        try:
            app = self._serve.status().applications.get(app_name(model))
        except Exception:
            return None
        messages = [d.message for d in (app.deployments.values() if app else ()) if d.message]
        lines = [ln.strip() for m in messages for ln in m.splitlines()
                 if "Error" in ln and not ln.strip().startswith(("File ", "raise "))]
        return lines[-1] if lines else None

    def undeploy(self, model: str) -> None:
        try:
            self._serve.delete(app_name(model), _blocking=False)
        except Exception as exc:
            log.warning("removing the fleet deployment of %s failed: %s", model, exc)

    def running(self, model: str) -> int:
        """Replicas of ``model`` running now (one call to Serve's controller)."""
        app = self._serve.status().applications.get(app_name(model))
        if app is None:
            return 0
        return sum(_states(d.replica_states).get("RUNNING", 0)
                   for d in app.deployments.values())

    # --- status ---------------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """Every node Ray knows: alive or not, its box, resources."""
        out = []
        for n in self._ray.nodes():
            resources = n.get("Resources", {})
            boxes = [k.split(":", 1)[1] for k in resources if k.startswith("box:")]
            out.append({"node_id": n["NodeID"], "box": boxes[0] if boxes else None,
                        "address": n.get("NodeManagerAddress"), "alive": bool(n["Alive"]),
                        "cpus": resources.get("CPU", 0), "gpus": resources.get("GPU", 0),
                        "memory_bytes": int(resources.get("memory", 0)),
                        "head": bool(n.get("IsHeadNode") or
                                     "node:__internal_head__" in resources)})
        return out

    def replicas(self) -> list[dict[str, Any]]:
        """Every live replica of every model and the node it runs on.

        Read from the GCS actor table: the dashboard (and so ``ray.util.state``) is off on
        fleet nodes, one less service listening.
        """
        from ray._private.state import state as gcs_state

        out = []
        try:
            actors = gcs_state.actor_table(None, actor_state_name="ALIVE")
        except Exception as exc:
            log.warning("listing replicas failed: %s", exc)
            return out
        for a in actors.values():
            name = a.get("Name") or ""
            # SERVE_REPLICA::<app>#<deployment>#<id>
            if not name.startswith("SERVE_REPLICA::"):
                continue
            app = name.split("::", 1)[1].split("#", 1)[0]
            if not app.startswith(APP_PREFIX):
                continue
            out.append({"model": app[len(APP_PREFIX):], "replica": name.rsplit("#", 1)[-1],
                        "node_id": a["Address"]["NodeID"], "pid": a.get("Pid")})
        return out

    def status(self) -> dict[str, Any]:
        """Nodes with their health and the replicas on each (for CLI, API and TUI); a
        node's ``load`` is the requests in flight on its replicas (``ongoing`` each)."""
        nodes = self.nodes()
        reps = self.replicas()
        apps: dict[str, Any] = {}
        try:
            for name, app in self._serve.status().applications.items():
                if not name.startswith(APP_PREFIX):
                    continue
                states: dict[str, int] = {}
                for d in app.deployments.values():
                    for key, n in _states(d.replica_states).items():
                        states[key] = states.get(key, 0) + n
                apps[name[len(APP_PREFIX):]] = {
                    "status": str(getattr(app.status, "value", app.status)),
                    "running": states.get("RUNNING", 0), "replica_states": states,
                    "stream_channel": self.channels.get(name[len(APP_PREFIX):])}
        except Exception as exc:
            log.warning("serve status failed: %s", exc)
        ongoing = self.load.snapshot()
        for r in reps:
            r["ongoing"] = ongoing.get(r["replica"], 0)
        for node in nodes:
            node["replicas"] = [r for r in reps if r["node_id"] == node["node_id"]]
            node["load"] = sum(r["ongoing"] for r in node["replicas"])
        return {"address": self.address, "nodes": nodes, "models": apps}

    def close(self) -> None:
        """Leave the fleet running; only this driver disconnects."""
        try:
            self._ray.shutdown()
        except Exception as exc:
            log.warning("disconnecting from the fleet: %s", exc)
