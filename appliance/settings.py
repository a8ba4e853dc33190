"""Configuration: one TOML file (``appliance.toml``) plus ``APPLIANCE_*`` environment overrides.

Precedence, highest first: explicit overrides (CLI flags), environment, the TOML file,
the defaults below. Nothing reads settings at import time: call ``load_settings``.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from appliance.errors import ConfigError
from storage.db import DB_FILE

CONFIG_ENV = "APPLIANCE_CONFIG"
DEFAULT_CONFIG = Path("appliance.toml")


class Settings(BaseSettings):
    """Every knob of the box. Each field is documented; `appliance config show` prints them."""

    model_config = SettingsConfigDict(env_prefix="APPLIANCE_", extra="forbid")

    host: str = Field("127.0.0.1", description="Address to bind. Loopback unless you mean it.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port of the API.")
    data_dir: Path = Field(Path("data"), description="Database, licence, keys and model store.")
    models_dir: Path | None = Field(None, description="Model store; default <data_dir>/models.")
    wheel_cache: Path | None = Field(
        None, description="Where fetched model wheels are kept; default <data_dir>/cache/wheels.")
    default_llm: str = Field("smollm2-135m-instruct", description="Model for readiness checks.")
    default_ocr: str = Field("ppocr-v4", description="OCR model used when a request names none.")
    idle_unload_s: float = Field(900.0, ge=0, description="Unload after this idle time (0=never).")
    memory_budget_mb: int = Field(
        4096, ge=64, description="Loaded models may use this much RAM; LRU models are unloaded.")
    llm_engine: str = Field(
        "batched", pattern="^batched$",
        description="'batched' (continuous batching) is the only LLM engine; the serial one "
                    "was removed.")
    llm_ctx: int = Field(
        4096, ge=256, le=131072,
        description="Context tokens per request; each slot gets this much KV cache.")
    llm_slots: int = Field(8, ge=1, le=256, description="Sequences decoded together per LLM.")
    llm_threads: int | None = Field(None, ge=1, description="CPU threads; default: all cores.")
    llm_gpu_layers: int = Field(-1, description="Layers on the GPU: -1 all if CUDA works, 0 none.")
    llm_max_queue: int = Field(64, ge=1, description="Waiting requests per LLM before 503.")
    llm_prefix_reuse: bool = Field(
        True, description="Reuse the KV cells of a shared prompt prefix (system prompt, "
        "earlier turns); off only to compare.")
    llm_prefix_cache_mb: int | None = Field(
        None, ge=0, description="Host RAM per LLM for saved prompt prefixes (KV states, LRU); "
        "default: an eighth of memory_budget_mb; 0 turns it off.")
    embed_batch_tokens: int = Field(
        2048, ge=256, le=65536,
        description="Tokens one embedding decode reads, many short inputs packed together "
        "(at least the model's input length); bounds an embedding request's memory however "
        "many inputs it holds.")
    embed_max_inputs: int = Field(
        2048, ge=1, le=100_000, description="Inputs per /v1/embeddings request (OpenAI's "
        "limit is 2048).")
    embed_max_request_tokens: int = Field(
        300_000, ge=1, description="Tokens per /v1/embeddings request, all inputs together "
        "(OpenAI's limit is 300,000).")
    responses_retention_days: float = Field(
        30.0, gt=0, le=3650, description="Days a stored /v1/responses answer (store: true) "
        "is kept for previous_response_id and GET; older rows are deleted.")
    responses_max_bytes: int = Field(
        1 << 20, ge=1024, le=64 << 20, description="Largest conversation (input items as "
        "JSON) one stored response may hold; a longer one with store: true is a 400.")
    vision_max_batch: int = Field(1, ge=1, le=64, description="Images per vision batch.")
    vision_max_wait_ms: float = Field(2.0, ge=0, description="Wait this long to fill a batch.")
    vision_max_queue: int = Field(64, ge=1, description="Waiting images per model before 503.")
    max_image_bytes: int = Field(20 << 20, ge=1024, description="Largest image upload accepted.")
    max_image_pixels: int = Field(40_000_000, ge=1024, description="Largest decoded image.")
    max_body_bytes: int = Field(32 << 20, ge=1024, description="Largest request body accepted.")
    max_bundle_bytes: int = Field(
        16 << 30, ge=1024, description="Largest update bundle upload (/admin/updates).")
    tls_cert: Path | None = Field(None, description="PEM certificate to serve HTTPS.")
    tls_key: Path | None = Field(None, description="PEM private key to serve HTTPS.")
    cors_origins: list[str] = Field(default_factory=list, description="CORS origins; off if empty.")
    log_level: str = Field("info", description="debug, info, warning or error.")
    clock_tolerance_h: float = Field(24.0, ge=0, description="Clock may go back this far.")
    worker_nice: int = Field(
        5, ge=0, le=19, description="Engine workers run this much nicer than the API "
        "process, so streams, health checks and the admin API stay responsive while "
        "inference uses every core.")
    worker_ready_timeout_s: float = Field(
        900.0, ge=1, description="How long an engine worker may take to load and self-test.")
    state_dir: Path | None = Field(
        None, description="Trusted licensing state kept outside data_dir (evaluation record, "
        "newest licence, audit key and head); default /var/lib/appliance-state if writable, "
        "else ~/.local/state/appliance.")
    metrics_public: bool = Field(
        False, description="Serve /metrics without a key (it shows model names and traffic); "
        "by default it needs an admin key.")
    max_keys_per_seat: int = Field(
        2, ge=1, le=100, description="Active API keys one seat may hold (a seat is one person).")
    # --- fleet mode (the `fleet` extra; see README "Fleet") -------------------------------
    fleet_enabled: bool = Field(
        False, description="Serve models through the fleet's Ray Serve replicas (this box "
                           "is the head). Needs `pip install '.[fleet]'`.")
    fleet_address: str | None = Field(
        None, description="IP the fleet head binds and other boxes join; no default, and "
                          "0.0.0.0 is refused. 127.0.0.1 is refused too (Ray swaps it for "
                          "the routable address); use 127.0.0.2 for a one-machine fleet.")
    fleet_port: int = Field(6380, ge=1, le=65535, description="The head's Ray (GCS) port.")
    fleet_box: str | None = Field(None, description="This box's name in the fleet; "
                                                    "default: the host name.")
    fleet_min_replicas: int = Field(
        1, ge=0, description="Fewest replicas of each LLM; 0 lets an idle model scale to "
                             "none (a request then gets 503 model_starting while one starts).")
    fleet_model_min_replicas: dict[str, int] = Field(
        default_factory=dict, description="Per model name, fewest replicas, overriding "
        "fleet_min_replicas for that model (e.g. {\"rarely-used\": 0}).")
    fleet_max_replicas: int = Field(4, ge=1, description="Most replicas of each LLM.")
    fleet_target_ongoing: float = Field(
        2.0, gt=0, description="Autoscaling target: requests in flight per replica.")
    fleet_replica_cpus: float = Field(1.0, gt=0, description="Cores each replica reserves.")
    fleet_vision_gpus: float = Field(
        1.0, gt=0, le=1, description="Share of a GPU each replica of a vision model that "
                                     "asks for TensorRT or CUDA reserves (0.25: four share "
                                     "one GPU).")
    fleet_upscale_delay_s: float = Field(2.0, ge=0, description="Queue this long: add one.")
    fleet_downscale_delay_s: float = Field(60.0, ge=0, description="Idle this long: remove.")
    fleet_look_back_s: float = Field(
        30.0, gt=10, description="The autoscaler averages requests in flight over this long "
                                 "(more than Serve's 10 s metrics interval).")
    fleet_object_store_mb: int = Field(200, ge=80, description="Ray object store per node.")
    fleet_stream_grpc: bool = Field(
        True, description="Stream tokens from replicas to the head over Serve's direct gRPC "
                          "channel (each replica listens on a port the kernel picks, so "
                          "fleet boxes must reach each other on any TCP port); off: as Ray "
                          "objects over Ray's worker ports, which costs the replica and the "
                          "head more CPU per token.")

    @field_validator("fleet_model_min_replicas")
    @classmethod
    def _mins(cls, v: dict[str, int]) -> dict[str, int]:
        bad = sorted(name for name, n in v.items() if n < 0)
        if bad:
            raise ValueError(f"fleet_model_min_replicas must be 0 or more (for {bad})")
        return v

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("log_level must be debug, info, warning or error")
        return v.lower()

    @property
    def prefix_cache_bytes(self) -> int:
        mb = self.llm_prefix_cache_mb
        return (self.memory_budget_mb // 8 if mb is None else mb) << 20

    @property
    def model_root(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def wheel_dir(self) -> Path:
        return self.wheel_cache or self.data_dir / "cache" / "wheels"

    @property
    def db_path(self) -> Path:
        return self.data_dir / DB_FILE

    @property
    def box_name(self) -> str:
        """This box's name: in a fleet, in usage rows and in ``X-Appliance-Node``."""
        return self.fleet_box or socket.gethostname()

    def fleet_min_for(self, model: str) -> int:
        """Fewest replicas of ``model`` in a fleet (its own setting, else the default)."""
        return self.fleet_model_min_replicas.get(model, self.fleet_min_replicas)

    @property
    def fleet_dir(self) -> Path:
        """The fleet's join token, node log and pid file."""
        return self.data_dir / "fleet"


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Settings from ``config`` (or $APPLIANCE_CONFIG, or ./appliance.toml if present)."""
    path = config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    file_values: dict[str, Any] = {}
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is not None:
        try:
            file_values = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    env_keys = {name for name in Settings.model_fields
                if f"APPLIANCE_{name.upper()}" in os.environ}
    values = {k: v for k, v in file_values.items() if k not in env_keys}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid configuration ({path or 'environment'}): {problems}") from exc


def describe(settings: Settings) -> list[tuple[str, Any, str]]:
    """(name, effective value, description) for every field, for `config show`."""
    return [(name, getattr(settings, name), field.description or "")
            for name, field in Settings.model_fields.items()]
