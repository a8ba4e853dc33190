"""Model registry: every pack in the store, loaded on first use, unloaded when idle or when
the memory budget needs room (least recently used first).

Loading runs in a worker thread; one load per model at a time. An engine in use (a lease
is open) is never evicted for the budget; idle unloading skips it too. Leases are counted
on the event loop before any await, and every unload re-checks them under the model's
lock, so a request never receives an engine that eviction or idle unloading closes under
it. Only an admin's explicit ``unload`` closes an engine in use (its requests get 503
``model_unloaded``). A model being removed takes no new leases and is never reloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from appliance.errors import ApplianceError, ModelNotFoundError, ModelStoreError
from appliance.modelstore import Manifest, ModelStore

log = logging.getLogger(__name__)

Loader = Callable[[Manifest, Path], Any]  # returns an engine object with close()


@dataclass
class Entry:
    """Runtime state of one model."""

    manifest: Manifest
    engine: Any = None
    loaded_at: float | None = None
    last_used: float | None = None
    leases: int = 0
    removing: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def loaded(self) -> bool:
        return self.engine is not None

    def estimate_bytes(self) -> int:
        engine_bytes = getattr(self.engine, "memory_bytes", None)
        if isinstance(engine_bytes, int) and engine_bytes > 0:
            return engine_bytes
        # Weights are memory-mapped; add a quarter for KV cache and buffers.
        return int(self.manifest.size * 1.25)


class ModelRegistry:
    """Knows the store's models and owns the loaded engines."""

    def __init__(self, store: ModelStore, loaders: dict[str, Loader], *,
                 memory_budget: int, idle_unload_s: float) -> None:
        self.store = store
        self.loaders = loaders
        self.memory_budget = memory_budget
        self.idle_unload_s = idle_unload_s
        self._entries: dict[str, Entry] = {}
        self.refresh()

    # --- catalogue -----------------------------------------------------------------
    def refresh(self) -> None:
        """Pick up packs added or removed on disk (e.g. by an update bundle)."""
        found = {m.name: m for m in self.store.manifests()}
        for name in list(self._entries):
            if name not in found and not self._entries[name].loaded:
                del self._entries[name]
        for name, manifest in found.items():
            entry = self._entries.get(name)
            if entry is None:
                self._entries[name] = Entry(manifest)
            elif not entry.loaded:
                entry.manifest = manifest

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry:
        entry = self._entries.get(name)
        if entry is None:
            self.refresh()
            entry = self._entries.get(name)
        if entry is None:
            raise ModelNotFoundError(name, self.names())
        return entry

    def status(self) -> list[dict[str, Any]]:
        out = []
        for name in self.names():
            e = self._entries[name]
            info: dict[str, Any] = {
                "name": name, "engine": e.manifest.engine, "format": e.manifest.format,
                "quantisation": e.manifest.quantisation, "size": e.manifest.size,
                "state": "loaded" if e.loaded else "unloaded",
                "bytes": e.estimate_bytes() if e.loaded else 0,
                "last_used": e.last_used, "loaded_at": e.loaded_at, "in_use": e.leases,
            }
            if e.loaded:
                provider = getattr(e.engine, "provider", None)
                info["provider"] = provider if isinstance(provider, str) else _backend(e.engine)
                report = getattr(e.engine, "provider_report", None)
                if report:
                    info["provider_report"] = report
                worker = getattr(e.engine, "worker_status", None)
                if callable(worker):
                    info.update(worker())
            out.append(info)
        return out

    def loaded_engines(self) -> dict[str, Any]:
        return {n: e.engine for n, e in self._entries.items() if e.loaded}

    # --- loading -------------------------------------------------------------------
    def _live(self, name: str) -> Entry:
        entry = self.entry(name)
        if entry.removing:
            raise ModelNotFoundError(name, [n for n in self.names() if n != name])
        return entry

    async def acquire(self, name: str) -> Any:
        """The loaded engine for ``name`` (loading it if needed)."""
        entry = self._live(name)
        while not entry.loaded:
            async with entry.lock:
                if entry.removing:
                    raise ModelNotFoundError(name, [n for n in self.names() if n != name])
                if not entry.loaded:
                    await self._load(entry)
        entry.last_used = time.time()
        return entry.engine

    @contextlib.asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[Any]:
        """Lease the engine for the duration of a request (protects it from eviction)."""
        entry = self._live(name)
        entry.leases += 1
        try:
            yield await self.acquire(name)
        finally:
            entry.leases -= 1
            entry.last_used = time.time()

    async def _load(self, entry: Entry) -> None:
        loader = self.loaders.get(entry.manifest.engine)
        if loader is None:
            raise ModelStoreError(
                f"model {entry.manifest.name!r} needs engine {entry.manifest.engine!r}, "
                "which this box does not have")
        await self._make_room(int(entry.manifest.size * 1.25), keep=entry.manifest.name)
        path = self.store.path(entry.manifest.name)
        started = time.perf_counter()
        engine = await anyio.to_thread.run_sync(loader, entry.manifest, path)
        entry.engine = engine
        entry.loaded_at = entry.last_used = time.time()
        log.info("loaded model %s in %.2fs", entry.manifest.name, time.perf_counter() - started)

    async def _make_room(self, needed: int, keep: str) -> None:
        used = sum(e.estimate_bytes() for e in self._entries.values() if e.loaded)
        victims = sorted((e for e in self._entries.values()
                          if e.loaded and e.leases == 0 and e.manifest.name != keep),
                         key=lambda e: e.last_used or 0)
        while used + needed > self.memory_budget and victims:
            victim = victims.pop(0)
            size = victim.estimate_bytes()
            # the list was made before any await: a request may have leased it since
            if await self._unload_idle_entry(victim, "to stay within the memory budget"):
                used -= size
        if used + needed > self.memory_budget:
            log.warning("loading beyond the memory budget (%d + %d > %d bytes)",
                        used, needed, self.memory_budget)

    async def load(self, name: str) -> None:
        await self.acquire(name)

    async def unload(self, name: str) -> bool:
        entry = self.entry(name)
        async with entry.lock:
            if not entry.loaded:
                return False
            await self._unload(entry)
            return True

    async def _unload_idle_entry(self, entry: Entry, why: str) -> bool:
        """Unload ``entry`` if it is still loaded and unleased once its lock is held."""
        async with entry.lock:
            if not entry.loaded or entry.leases:
                return False
            log.info("unloading %s %s", entry.manifest.name, why)
            await self._unload(entry)
            return True

    async def _unload(self, entry: Entry) -> None:
        engine, entry.engine, entry.loaded_at = entry.engine, None, None
        if engine is not None:
            await anyio.to_thread.run_sync(engine.close)

    async def unload_idle(self, now: float | None = None) -> list[str]:
        """Unload models unused for ``idle_unload_s``; return their names."""
        if self.idle_unload_s <= 0:
            return []
        now = now or time.time()
        gone = []
        for entry in list(self._entries.values()):
            if (entry.loaded and entry.leases == 0 and entry.last_used is not None
                    and now - entry.last_used >= self.idle_unload_s
                    and await self._unload_idle_entry(entry, "(idle)")):
                gone.append(entry.manifest.name)
        return gone

    async def remove(self, name: str) -> None:
        """Unload and delete a pack; refused while requests use it. From the first line
        on, no new request can lease or reload it."""
        entry = self._live(name)
        if entry.leases:
            raise ApplianceError(f"model {name!r} is serving requests; try again shortly")
        entry.removing = True
        try:
            async with entry.lock:
                if entry.loaded:
                    await self._unload(entry)
            await anyio.to_thread.run_sync(self.store.remove, name)
        except BaseException:
            entry.removing = False
            raise
        self._entries.pop(name, None)

    async def close(self) -> None:
        for entry in list(self._entries.values()):
            if entry.loaded:
                await self._unload(entry)


def _backend(engine: Any) -> str:
    info = getattr(engine, "info", None)
    return str(getattr(info, "backend", "cpu"))
