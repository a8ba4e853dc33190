"""Configuration precedence and errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import ConfigError
from appliance.settings import describe, load_settings


def test_file_then_env_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "appliance.toml"
    cfg.write_text('port = 9000\nllm_slots = 4\nlog_level = "debug"\n')
    monkeypatch.setenv("APPLIANCE_LLM_SLOTS", "6")
    s = load_settings(cfg)
    assert (s.port, s.llm_slots, s.log_level) == (9000, 6, "debug")
    assert load_settings(cfg, port=9100).port == 9100
    assert s.host == "127.0.0.1"
    assert not s.cors_origins


def test_invalid_values_are_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "appliance.toml"
    cfg.write_text("port = 99999\n")
    with pytest.raises(ConfigError, match="port"):
        load_settings(cfg)
    cfg.write_text("not toml = = =")
    with pytest.raises(ConfigError, match="TOML"):
        load_settings(cfg)
    cfg.write_text("no_such_setting = 1\n")
    with pytest.raises(ConfigError, match="no_such_setting"):
        load_settings(cfg)


def test_every_field_is_documented(tmp_path: Path) -> None:
    rows = describe(load_settings(_empty(tmp_path)))
    assert rows and all(doc for _, _, doc in rows)


def _empty(tmp: Path) -> Path:
    p = tmp / "empty.toml"
    p.write_text("")
    return p


def test_fleet_min_replicas_per_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's form: a rarely used model may scale to zero, the others keep the
    default; a negative count is refused naming the model."""
    cfg = tmp_path / "appliance.toml"
    cfg.write_text('fleet_min_replicas = 2\nfleet_model_min_replicas = {"rarely-used" = 0}\n')
    s = load_settings(cfg)
    assert (s.fleet_min_for("rarely-used"), s.fleet_min_for("busy")) == (0, 2)
    monkeypatch.setenv("APPLIANCE_FLEET_MODEL_MIN_REPLICAS", '{"odd": -1}')
    with pytest.raises(ConfigError, match="odd"):
        load_settings(cfg)
