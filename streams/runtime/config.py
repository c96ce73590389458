"""One validated settings model: YAML file (`--config`) and `PARTNER_GUARD_*` environment.

The environment wins over the file. librdkafka properties pass through: `kafka:` in the
file, or `PARTNER_GUARD_KAFKA_<PROPERTY>` in the environment (`_` read as `.`, so
`PARTNER_GUARD_KAFKA_SASL_MECHANISM` sets `sasl.mechanism`). Secrets in those properties
(passwords, keys) are never printed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

ENV_PREFIX = "PARTNER_GUARD_"
KAFKA_ENV_PREFIX = ENV_PREFIX + "KAFKA_"
SECRET_MARKERS = ("password", "secret", "key", "token", "credentials")
# Settings the guard owns: a passthrough property may not override them.
OWNED_KAFKA_PROPERTIES = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "transactional.id",
        "enable.auto.commit",
        "isolation.level",
        "enable.idempotence",
    }
)


class ConfigError(Exception):
    """Configuration that cannot be used; the message names the setting and the fix."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _split_pairs(value: Any) -> Any:
    if isinstance(value, str):
        pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
        return {k.strip(): v.strip() for k, v in pairs}
    return value


class Settings(BaseSettings):
    """Everything `partner-guard run` needs."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    bootstrap_servers: str = Field(min_length=1, description="Kafka bootstrap servers")
    input_topics: Annotated[list[str], NoDecode] = Field(["internal.events"], min_length=1)
    input_formats: Annotated[dict[str, Literal["json", "avro"]], NoDecode] = Field(
        default_factory=dict, description="per input topic: json (default) or avro (Confluent framing)"
    )
    rules_dir: Path = Path("rules")
    consent_topic: str = "privacy.consent"
    signup_status_topic: str = "member.signup-status"
    blocked_topic: str = "guard.blocked"
    group_id: str = "partner-guard"
    transactional_id: str | None = Field(None, description="unique per instance; default group-host-pid")
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(9108, ge=0, le=65535)
    batch_size: int = Field(2000, ge=1, le=100_000)
    batch_timeout_ms: int = Field(25, ge=1, description="longest wait to fill a batch (latency at low load)")
    session_timeout_ms: int = Field(10_000, ge=1000)
    max_state_lag_records: int = Field(0, ge=0, description="state records still unread before blocking")
    state_catchup_timeout_ms: int = Field(2000, ge=1)
    max_state_silence_ms: int = Field(30_000, ge=100, description="block when state unconfirmed this long")
    max_record_bytes: int = Field(900_000, ge=10_000)
    state_store: Literal["memory", "rocksdb"] = Field(
        "memory", description="memory: rebuilt from the topics at every start; rocksdb: on disk, checkpointed"
    )
    state_dir: Path = Field(Path("state"), description="where the rocksdb state store lives")
    state_cache_entries: int = Field(100_000, ge=0, description="rocksdb: entries cached in memory")
    state_block_cache_mb: int = Field(64, ge=1, description="rocksdb: block cache size")
    state_write_buffer_mb: int = Field(16, ge=1, description="rocksdb: memtable size (two per table)")
    blocked_payload: Literal["full", "redacted", "encrypted"] = Field(
        "full", description="how blocked records keep the original: full, redacted or encrypted"
    )
    payload_keys_file: Path | None = Field(None, description="file of id:base64 AES-256 keys")
    keys_dir: Path | None = None
    dev: bool = False
    create_topics: bool = False
    partitions: int = Field(3, ge=1)
    kafka: dict[str, str] = Field(default_factory=dict, description="librdkafka passthrough")
    engine: Literal["kafka", "faust"] = Field("kafka", description="kafka (confluent-kafka) or faust")
    faust_processing_guarantee: Literal["exactly_once", "at_least_once"] = "at_least_once"
    faust_accepted_gaps: Annotated[list[Literal["P8"]], NoDecode] = Field(
        default_factory=list, description="promises the operator accepts the Faust engine cannot keep"
    )

    _split_topics = field_validator("input_topics", mode="before")(_split_csv)
    _split_formats = field_validator("input_formats", mode="before")(_split_pairs)
    _split_gaps = field_validator("faust_accepted_gaps", mode="before")(_split_csv)

    @field_validator("kafka")
    @classmethod
    def _no_owned_properties(cls, value: dict[str, str]) -> dict[str, str]:
        owned = sorted(OWNED_KAFKA_PROPERTIES & set(value))
        if owned:
            raise ValueError(f"{owned} are set by partner-guard itself; use the matching setting instead")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit values, then the environment, then the YAML file (passed as init)."""
        return env_settings, init_settings

    def redacted_kafka(self) -> dict[str, str]:
        """Passthrough properties with secret values masked, for logs."""
        return {k: ("***" if any(m in k for m in SECRET_MARKERS) else v) for k, v in self.kafka.items()}

    def topic_format(self, topic: str) -> str:
        """The input format of a topic."""
        return self.input_formats.get(topic, "json")


def _kafka_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        name[len(KAFKA_ENV_PREFIX) :].lower().replace("_", "."): value
        for name, value in environ.items()
        if name.startswith(KAFKA_ENV_PREFIX)
    }


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = YAML(typ="safe").load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    except MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 1
        raise ConfigError(f"{path}:{line}: YAML error: {exc.problem}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}:1: the config file must be a mapping of settings")
    return loaded


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings; raise `ConfigError` naming the bad setting.

    Precedence: command-line overrides, then the environment, then the YAML file.
    """
    values: dict[str, Any] = _read_yaml(config_file) if config_file else {}
    env_kafka = _kafka_from_env(os.environ)
    if env_kafka:
        values["kafka"] = {**values.get("kafka", {}), **env_kafka}
    try:
        explicit = {k: v for k, v in overrides.items() if v is not None}
        settings = Settings(**{**values, **explicit})  # the environment wins over these ...
        return (
            Settings.model_validate({**settings.model_dump(), **explicit}) if explicit else settings
        )  # ... not these
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            setting = ".".join(str(p) for p in err["loc"]) or "(settings)"
            env_name = ENV_PREFIX + str(err["loc"][0]).upper() if err["loc"] else ENV_PREFIX
            problems.append(f"setting '{setting}' (env {env_name}): {err['msg']}")
        where = f" (file {config_file})" if config_file else ""
        raise ConfigError("invalid configuration" + where + ":\n  " + "\n  ".join(problems)) from None
