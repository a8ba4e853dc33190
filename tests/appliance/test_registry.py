"""Registry: load on first use, LRU eviction under the memory budget, idle unload."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from appliance.errors import ModelNotFoundError
from appliance.modelstore import Manifest, ModelStore
from appliance.registry import ModelRegistry


class Loaded:
    """What the registry needs of an engine: close() and a memory figure."""

    def __init__(self, name: str, size: int) -> None:
        self.name, self.memory_bytes, self.closed = name, size, False

    def close(self) -> None:
        self.closed = True


def _store(tmp: Path, sizes: dict[str, int]) -> ModelStore:
    store = ModelStore(tmp / "models")
    for name, size in sizes.items():
        src = tmp / f"src-{name}"
        src.mkdir()
        data = b"w" * size
        (src / "w.bin").write_bytes(data)
        (src / "manifest.json").write_text(json.dumps({
            "name": name, "engine": "onnx", "format": "onnx", "files": [
                {"path": "w.bin", "size": size, "sha256": hashlib.sha256(data).hexdigest()}]}))
        store.import_dir(src)
    return store


def _registry(store: ModelStore, budget: int, idle: float = 0) -> tuple[ModelRegistry, list]:
    made: list[Loaded] = []

    def load(manifest: Manifest, directory: Path) -> Loaded:
        engine = Loaded(manifest.name, manifest.size)
        made.append(engine)
        return engine

    return ModelRegistry(store, {"onnx": load}, memory_budget=budget, idle_unload_s=idle), made


def test_loads_on_first_use_and_evicts_least_recently_used(tmp_path: Path) -> None:
    store = _store(tmp_path, {"a": 400, "b": 400, "c": 400})
    reg, made = _registry(store, budget=1100)

    async def scenario() -> None:
        a = await reg.acquire("a")
        assert await reg.acquire("a") is a and len(made) == 1
        await reg.acquire("b")
        await reg.acquire("a")  # a is now more recent than b
        await reg.acquire("c")  # needs room: b goes
        states = {s["name"]: s["state"] for s in reg.status()}
        assert states == {"a": "loaded", "b": "unloaded", "c": "loaded"}
        assert made[1].closed and not made[0].closed

    asyncio.run(scenario())


def test_engine_in_use_is_not_evicted(tmp_path: Path) -> None:
    store = _store(tmp_path, {"a": 400, "b": 400})
    reg, made = _registry(store, budget=500)

    async def scenario() -> None:
        async with reg.use("a"):
            await reg.acquire("b")  # over budget, but a is leased
            assert not made[0].closed
        await reg.acquire("a")

    asyncio.run(scenario())


def test_idle_models_unload(tmp_path: Path) -> None:
    store = _store(tmp_path, {"a": 10})
    reg, made = _registry(store, budget=10_000, idle=60)

    async def scenario() -> None:
        await reg.acquire("a")
        assert await reg.unload_idle(now=reg.entry("a").last_used + 30) == []
        assert await reg.unload_idle(now=reg.entry("a").last_used + 61) == ["a"]
        assert made[0].closed

    asyncio.run(scenario())


def test_unknown_model_lists_available(tmp_path: Path) -> None:
    reg, _ = _registry(_store(tmp_path, {"a": 10}), budget=100)
    with pytest.raises(ModelNotFoundError, match="available: a"):
        asyncio.run(reg.acquire("zzz"))


def test_pack_added_on_disk_is_found_without_restart(tmp_path: Path) -> None:
    store = _store(tmp_path, {"a": 10})
    reg, _ = _registry(store, budget=100)
    (tmp_path / "more").mkdir()
    other = _store(tmp_path / "more", {"b": 10})
    store.import_dir(other.path("b"))
    assert asyncio.run(reg.acquire("b")).name == "b"


class SlowClose(Loaded):
    """An engine whose close() takes a while (a worker process shutting down)."""

    def close(self) -> None:
        import time

        time.sleep(0.3)
        self.closed = True


def _slow_registry(store: ModelStore, budget: int) -> tuple[ModelRegistry, list]:
    made: list[Loaded] = []

    def load(manifest: Manifest, directory: Path) -> Loaded:
        engine = SlowClose(manifest.name, manifest.size)
        made.append(engine)
        return engine

    return ModelRegistry(store, {"onnx": load}, memory_budget=budget, idle_unload_s=0), made


def test_eviction_never_closes_an_engine_leased_while_it_ran(tmp_path: Path) -> None:
    """Loading c must evict a and b; while a closes (slowly), a request leases b. b must
    stay loaded and usable: the victim list made before the first await is re-checked."""
    store = _store(tmp_path, {"a": 400, "b": 400, "c": 400})
    reg, _made = _slow_registry(store, budget=1000)

    async def scenario() -> None:
        await reg.acquire("a")
        await reg.acquire("b")  # b is the newer: a goes first
        assert reg.loaded_engines().keys() == {"a", "b"}
        reg.memory_budget = 500  # loading c now needs both a and b gone
        load_c = asyncio.create_task(reg.acquire("c"))
        await asyncio.sleep(0.1)  # a is being closed
        async with reg.use("b") as b:
            await asyncio.sleep(0.5)  # a's close and c's load finish meanwhile
            assert not b.closed, "eviction closed an engine a request had leased"
            assert reg.loaded_engines().get("b") is b
        await load_c
        assert "c" in reg.loaded_engines()

    asyncio.run(scenario())


def test_a_model_being_removed_takes_no_lease_and_is_not_reloaded(tmp_path: Path) -> None:
    store = _store(tmp_path, {"a": 400})
    reg, made = _slow_registry(store, budget=10_000)

    async def scenario() -> None:
        await reg.acquire("a")
        removal = asyncio.create_task(reg.remove("a"))
        await asyncio.sleep(0.1)  # a's engine is closing
        with pytest.raises(ModelNotFoundError):
            async with reg.use("a"):
                pass
        with pytest.raises(ModelNotFoundError):
            await reg.acquire("a")
        await removal
        assert "a" not in reg.names()
        assert all(e.closed for e in made), "an engine of a removed model was left open"
        assert len(made) == 1, "the model was reloaded while it was being removed"

    asyncio.run(scenario())


def test_idle_unload_skips_an_engine_leased_while_it_waited(tmp_path: Path) -> None:
    store = _store(tmp_path, {"a": 400})
    reg, _made = _slow_registry(store, budget=10_000)
    reg.idle_unload_s = 1

    async def scenario() -> None:
        await reg.acquire("a")
        entry = reg.entry("a")
        async with entry.lock:  # someone holds a's lock while the reaper looks at a
            reaper = asyncio.create_task(reg.unload_idle(now=entry.last_used + 5))
            await asyncio.sleep(0.05)
            lease = reg.use("a")
            engine = await lease.__aenter__()  # a request leases a meanwhile
        assert await reaper == []
        assert not engine.closed
        await lease.__aexit__(None, None, None)

    asyncio.run(scenario())
