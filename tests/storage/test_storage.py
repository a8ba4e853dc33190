"""storage/: atomic files and the one migration scheme (real SQLite files)."""

from __future__ import annotations

import os
import stat

import pytest

from storage.db import migrate, open_db, sql_step, version
from storage.files import atomic_write, write_json_atomic


def test_atomic_write_replaces_whole_files_with_the_mode_asked(tmp_path) -> None:
    path = tmp_path / "sub" / "file.json"
    write_json_atomic(path, {"b": 1, "a": 2}, 0o600)
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    atomic_write(path, "new", 0o644)
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "keep.txt"
    atomic_write(path, "old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


STEPS = [sql_step("CREATE TABLE a (x INTEGER)"), sql_step("CREATE TABLE b (y INTEGER)")]


def test_migrate_applies_pending_steps_once_per_component(tmp_path) -> None:
    db = open_db(tmp_path / "box.db")
    assert stat.S_IMODE((tmp_path / "box.db").stat().st_mode) == 0o600
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert migrate(db, "one", STEPS[:1]) == 1
    assert migrate(db, "one", STEPS) == 2  # only b is new
    assert migrate(db, "one", STEPS) == 2  # nothing to do
    assert {"a", "b", "schema_versions"} <= set(db.table_names())
    assert version(db, "one") == 2 and version(db, "other") == 0


def test_a_failing_step_leaves_nothing_behind(tmp_path) -> None:
    db = open_db(tmp_path / "box.db")
    bad = [STEPS[0], sql_step("CREATE TABLE broken (")]
    with pytest.raises(Exception, match=r"syntax|incomplete"):
        migrate(db, "one", bad)
    assert "a" not in db.table_names()
    assert version(db, "one") == 0


def test_a_box_from_before_the_scheme_continues_from_its_old_version_table(tmp_path) -> None:
    db = open_db(tmp_path / "box.db")
    db.execute("CREATE TABLE old_versions (version INTEGER NOT NULL)")
    db.execute("INSERT INTO old_versions VALUES (1)")
    db.execute("CREATE TABLE a (x INTEGER)")  # step 1 ran under the old scheme
    assert migrate(db, "one", STEPS, legacy_table="old_versions") == 2
    assert "b" in db.table_names() and version(db, "one") == 2


def test_after_commit_runs_once_the_outermost_transaction_commits(tmp_path) -> None:
    from storage.db import after_commit, immediate, open_db

    db = open_db(tmp_path / "a.db")
    ran: list[str] = []
    after_commit(db, lambda: ran.append("now"))  # no transaction: at once
    assert ran == ["now"]
    with immediate(db):
        with immediate(db):
            after_commit(db, lambda: ran.append("outer"))
        assert ran == ["now"]  # the nested block committed nothing
    assert ran == ["now", "outer"]
    with pytest.raises(ValueError), immediate(db):
        after_commit(db, lambda: ran.append("rolled back"))
        raise ValueError
    with immediate(db):
        pass
    assert ran == ["now", "outer"]  # dropped with its rollback, never run later
