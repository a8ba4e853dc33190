"""The cloud overflow decision (pure) and the remote book (real SQLite, real files)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from appliance.egress import (
    Load,
    Remote,
    allows,
    open_to,
    parse_models,
    should_overflow,
)
from appliance.errors import ApplianceError, RemoteNotFoundError
from appliance.remotes import RemoteBook
from appliance.store import Store

CLOUD = Remote("cloud", "https://cloud.example/v1", {"small": "small", "big": "gpt-big"})
ANY = Remote("own", "http://10.0.0.9:8080/v1")
FULL = Load(slots=2, active=2, waiting=0)


def test_policy_allows_text_for_llm_and_images_only_for_llm_plus_vision() -> None:
    assert not allows("none", images=False) and not allows("none", images=True)
    assert allows("llm", images=False) and not allows("llm", images=True)
    assert allows("llm+vision", images=False) and allows("llm+vision", images=True)


@pytest.mark.parametrize(("load", "saturated"), [
    (Load(2, 2, 0), True),    # every slot busy: the next request would wait
    (Load(2, 1, 1), True),    # one free slot, but one request already waits for it
    (Load(2, 1, 0), False),   # a free slot: served at once
    (Load(8, 0, 0), False),
])
def test_saturated_means_no_slot_is_free_for_one_more(load: Load, saturated: bool) -> None:
    assert load.saturated is saturated


def test_load_from_engine_stats() -> None:
    assert Load.from_stats({"slots": 1.0, "active_slots": 1.0, "queue_depth": 3.0}) == \
        Load(1, 1, 3)
    assert Load.from_stats({}) is None  # an engine without slots is never saturated


def test_should_overflow_needs_policy_remote_and_saturation() -> None:
    remotes = [CLOUD, ANY]
    assert should_overflow("llm", False, "small", remotes, FULL) is CLOUD
    assert should_overflow("llm", False, "other", remotes, FULL) is ANY  # ANY serves all
    assert should_overflow("llm", False, "small", [CLOUD], Load(2, 1, 0)) is None
    assert should_overflow("llm", False, "small", [CLOUD], None) is None
    assert should_overflow("none", False, "small", remotes, FULL) is None
    assert should_overflow("llm", True, "small", remotes, FULL) is None  # images stay
    assert should_overflow("llm+vision", True, "small", remotes, FULL) is CLOUD
    assert should_overflow("llm", False, "other", [CLOUD], FULL) is None
    assert should_overflow("llm", False, "small", [], FULL) is None


def test_models_spec_and_remote_names() -> None:
    assert parse_models("*") == {} and parse_models(None) == {}
    assert parse_models("a, b=cloud-b") == {"a": "a", "b": "cloud-b"}
    with pytest.raises(ValueError, match="'=x'"):
        parse_models("a,=x")
    assert CLOUD.remote_model("big") == "gpt-big" and ANY.remote_model("x") == "x"
    assert open_to("llm", "big", [CLOUD, ANY]) == ["cloud", "own"]
    assert open_to("none", "big", [CLOUD, ANY]) == []


def test_remote_book_keeps_the_key_in_a_private_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "box.db")
    book = RemoteBook(store, tmp_path / "remotes")
    book.add("cloud", "https://cloud.example/v1/", "sk-remote-secret", {"small": "small"})
    key_file = tmp_path / "remotes" / "cloud.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert b"sk-remote-secret" not in (tmp_path / "box.db").read_bytes()
    again = RemoteBook(store, tmp_path / "remotes")  # what a restarted box reads
    assert [r.to_json()["url"] for r in again.list()] == ["https://cloud.example/v1"]
    assert again.key("cloud") == "sk-remote-secret"
    with pytest.raises(ApplianceError, match="exists"):
        book.add("cloud", "https://x.example/v1", "k", {})
    for bad_url in ("ftp://x/v1", "cloud.example/v1", "https://user:pw@x/v1"):
        with pytest.raises(ApplianceError):
            book.add("other", bad_url, "k", {})
    with pytest.raises(ApplianceError, match="name"):
        book.add("../etc", "https://x.example/v1", "k", {})
    book.remove("cloud")
    assert book.list() == [] and not key_file.exists()
    with pytest.raises(RemoteNotFoundError):
        book.remove("cloud")
    store.close()
