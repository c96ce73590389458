"""One validated settings model: YAML file (`--config`) and `PARTNER_GUARD_*` environment.

The environment wins over the file. librdkafka properties pass through: `kafka:` in the
file, or `PARTNER_GUARD_KAFKA_<PROPERTY>` in the environment (`_` read as `.`, so
`PARTNER_GUARD_KAFKA_SASL_MECHANISM` sets `sasl.mechanism`). Secrets in those properties
(passwords, keys) are never printed.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from streams.core.errors import RefusalError
from streams.core.schema import event_schema_fingerprint

ENV_PREFIX = "PARTNER_GUARD_"
# The compacted topic where `replay --republish` marks what it republished (not a setting).
REPUBLISHED_TOPIC = "guard.republished"
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


# The settings given as command-line flags while `load_settings` builds a `Settings`: the
# first source, so a flag wins over an environment variable even when the variable's value
# is invalid (it is never read). Mappings merge member by member (`--kafka` with the
# PARTNER_GUARD_KAFKA_* variables).
_FLAGS: ContextVar[dict[str, Any]] = ContextVar("partner_guard_flags", default={})  # noqa: B039


class ConfigError(RefusalError):
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


# The one placeholder `transactional_id` may hold (a stable per-instance name).
HOSTNAME_PLACEHOLDER = "{hostname}"


class Settings(BaseSettings):
    """Everything `partner-guard run` needs."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    bootstrap_servers: str = Field(min_length=1, description="Kafka bootstrap servers")
    input_topics: Annotated[list[str], NoDecode] = Field(
        ["internal.events"], min_length=1, description="internal event topics to guard (comma-separated)"
    )
    input_formats: Annotated[dict[str, Literal["json", "avro"]], NoDecode] = Field(
        default_factory=dict,
        description="per input topic: json (default) or avro (Confluent framing), as topic=avro,...",
    )
    rules_dir: Path = Field(Path("rules"), description="the partner allow-rules (the ruleset)")
    consent_topic: str = Field("privacy.consent", description="consent records (compacted)")
    signup_status_topic: str = Field("member.signup-status", description="sign-up statuses (compacted)")
    blocked_topic: str = Field("guard.blocked", description="every withheld input, with reason codes")
    forwarded_topic: str = Field(
        "guard.forwarded", description="compacted: forwarded markers and notice state (opt-out notices)"
    )
    optout_lookback: timedelta = Field(
        timedelta(days=396),
        gt=timedelta(0),
        description="opt-out notices reach partners that received data this recently (default 13 months;"
        " seconds or an ISO 8601 duration such as P396D)",
    )
    group_id: str = Field("partner-guard", description="the consumer group of every instance")
    transactional_id: str | None = Field(
        None,
        description="stable per instance, distinct between instances; `{hostname}` is replaced by the "
        "host (pod) name; default group-host-pid",
    )
    metrics_host: str = Field("0.0.0.0", description="address of /metrics, /healthz and /readyz")
    metrics_port: int = Field(
        9108, ge=0, le=65535, description="port of /metrics, /healthz, /readyz (0: free)"
    )
    batch_size: int = Field(2000, ge=1, le=100_000, description="most records in one transaction")
    batch_timeout_ms: int = Field(
        25,
        ge=1,
        description="longest wait for a batch (the kafka engine waits only for its first record)",
    )
    session_timeout_ms: int = Field(10_000, ge=1000, description="consumer group session timeout")
    transaction_call_timeout_ms: int = Field(
        30_000, ge=1000, description="each transactional call (init too); one blocked 10 s past it exits 4"
    )
    bootstrap_timeout_ms: int = Field(10_000, ge=100, description="refuse start when no broker answers")
    max_state_lag_records: int = Field(0, ge=0, description="state records still unread before blocking")
    state_catchup_timeout_ms: int = Field(
        2000, ge=1, description="longest wait for the state to catch up before a batch is decided"
    )
    max_state_silence_ms: int = Field(30_000, ge=100, description="block when state unconfirmed this long")
    max_record_bytes: int = Field(
        900_000, ge=10_000, description="larger outputs are blocked in reduced form (record_too_large)"
    )
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
    blocked_original: Literal["copy", "reference"] = Field(
        "copy",
        description="inputs no rule can receive: keep a copy of the original, or only a reference"
        " (source topic/partition/offset, SHA-256, size) that replay fetches from the source topic",
    )
    keys_dir: Path | None = Field(None, description="directory of <partner>.key files (HMAC keys)")
    workers: int = Field(1, ge=1, le=64, description="guard processes on this host (one per core)")
    dev: bool = Field(False, description="local run only: ephemeral keys where none are set, said so")
    create_topics: bool = Field(False, description="create missing topics at start")
    partitions: int = Field(3, ge=1, description="partitions of the topics --create-topics creates")
    kafka: dict[str, str] = Field(
        default_factory=dict,
        description="librdkafka passthrough (security.protocol, sasl.*, ssl.*, ...); in the environment"
        " one variable a property, PARTNER_GUARD_KAFKA_<PROPERTY> with _ read as .",
    )
    schema_registry_url: str | None = Field(None, description="Schema Registry URL(s) for Avro input")
    schema_registry_basic_auth: SecretStr | None = Field(
        None, description="registry user:password (or API key:secret); never printed"
    )
    schema_registry_ca_file: Path | None = Field(None, description="CA bundle to verify the registry")
    schema_registry_cert_file: Path | None = Field(None, description="client certificate (PEM)")
    schema_registry_key_file: Path | None = Field(None, description="client private key (PEM)")
    schema_registry_timeout_ms: int = Field(5000, ge=100, description="per registry request (one retry)")
    avro_schema_id: int | None = Field(None, ge=0, description="without a registry: the one writer id")
    avro_schema_fingerprint: str | None = Field(None, description="without a registry: its SHA-256 PCF")
    engine: Literal["kafka", "faust"] = Field("kafka", description="kafka (confluent-kafka) or faust")
    faust_processing_guarantee: Literal["exactly_once", "at_least_once"] = Field(
        "at_least_once", description="the Faust engine's delivery guarantee"
    )
    faust_accepted_gaps: Annotated[list[Literal["P8"]], NoDecode] = Field(
        default_factory=list, description="promises the operator accepts the Faust engine cannot keep"
    )

    _split_topics = field_validator("input_topics", mode="before")(_split_csv)
    _split_formats = field_validator("input_formats", mode="before")(_split_pairs)
    _split_gaps = field_validator("faust_accepted_gaps", mode="before")(_split_csv)

    @field_validator("transactional_id")
    @classmethod
    def _only_the_hostname_placeholder(cls, value: str | None) -> str | None:
        if value is not None and {"{", "}"} & set(value.replace(HOSTNAME_PLACEHOLDER, "")):
            raise ValueError(
                f"transactional_id {value!r}: the only placeholder it may hold is {HOSTNAME_PLACEHOLDER}"
            )
        return value

    def resolved_transactional_id(self, hostname: str, pid: int) -> str:
        """This instance's transactional id: the setting with `{hostname}` filled in, or group-host-pid.

        A StatefulSet pod's or a compose container's hostname is stable across restarts and
        distinct between replicas, so `partner-guard-{hostname}` scales out and still fences
        the zombie of a restarted instance; `--workers N` appends `-w<i>` for each worker.
        """
        if self.transactional_id is None:
            return f"{self.group_id}-{hostname}-{pid}"
        return self.transactional_id.replace(HOSTNAME_PLACEHOLDER, hostname)

    @field_validator("kafka")
    @classmethod
    def _no_owned_properties(cls, value: dict[str, str]) -> dict[str, str]:
        owned = sorted(OWNED_KAFKA_PROPERTIES & set(value))
        if owned:
            raise ValueError(f"{owned} are set by partner-guard itself; use the matching setting instead")
        return value

    @model_validator(mode="after")
    def _avro_writer_schema_known(self) -> Self:
        """Avro input needs a registry, or a pinned writer schema that is exactly the guard's."""
        if "avro" not in self.input_formats.values() or self.schema_registry_url:
            return self
        own = event_schema_fingerprint()
        if self.avro_schema_id is None or self.avro_schema_fingerprint is None:
            raise ValueError(
                "Avro input without schema_registry_url needs avro_schema_id (the id producers frame "
                f"records with) and avro_schema_fingerprint (this guard's schema: {own})"
            )
        if self.avro_schema_fingerprint.strip().lower() != own:
            raise ValueError(
                f"avro_schema_fingerprint {self.avro_schema_fingerprint!r} is not this guard's event "
                f"schema ({own}): records written under another schema revision would be misread; "
                "set schema_registry_url, or run a guard built with the producers' schema"
            )
        return self

    def registry_config(self) -> dict[str, Any]:
        """The confluent-kafka `SchemaRegistryClient` configuration.

        The client waits forever by default: a request gets `schema_registry_timeout_ms` and
        one retry, so a stalled registry costs a batch seconds, not the job (the id then
        blocks as `schema_unknown` and is asked again later).
        """
        conf: dict[str, Any] = {
            "url": self.schema_registry_url or "",
            "timeout": self.schema_registry_timeout_ms / 1000,
            "max.retries": 1,
        }
        if self.schema_registry_basic_auth is not None:
            conf["basic.auth.user.info"] = self.schema_registry_basic_auth.get_secret_value()
        if self.schema_registry_ca_file is not None:
            conf["ssl.ca.location"] = str(self.schema_registry_ca_file)
        if self.schema_registry_cert_file is not None:
            conf["ssl.certificate.location"] = str(self.schema_registry_cert_file)
        if self.schema_registry_key_file is not None:
            conf["ssl.key.location"] = str(self.schema_registry_key_file)
        return conf

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Command-line flags, then the environment, then the YAML file (passed as init)."""
        flags = InitSettingsSource(settings_cls, init_kwargs=_FLAGS.get())
        return flags, env_settings, init_settings

    def redacted_kafka(self) -> dict[str, str]:
        """Passthrough properties with secret values masked, for logs."""
        return {k: ("***" if any(m in k for m in SECRET_MARKERS) else v) for k, v in self.kafka.items()}

    def kafka_base(self) -> dict[str, Any]:
        """Base configuration of every Kafka client: the bootstrap servers and the passthrough."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.kafka}

    def guard_topics(self) -> dict[str, str]:
        """The topics the guard itself reads or writes, each with what it is (no rule may write there)."""
        return guard_topics(
            self.input_topics,
            self.consent_topic,
            self.signup_status_topic,
            self.blocked_topic,
            self.forwarded_topic,
        )

    def topic_format(self, topic: str) -> str:
        """The input format of a topic."""
        return self.input_formats.get(topic, "json")

    def topic_roles(self) -> list[TopicRole]:
        """Every topic the guard reads or writes by its settings, with its role and setting."""
        return [
            TopicRole(REPUBLISHED_TOPIC, "the republish marker topic", "a fixed name"),
            *(TopicRole(t, "an input topic", "input_topics") for t in dict.fromkeys(self.input_topics)),
            TopicRole(self.consent_topic, "the consent state topic", "consent_topic"),
            TopicRole(self.signup_status_topic, "the sign-up status state topic", "signup_status_topic"),
            TopicRole(self.blocked_topic, "the blocked-event topic", "blocked_topic"),
            TopicRole(self.forwarded_topic, "the forwarded-marker topic", "forwarded_topic"),
        ]


@dataclass(frozen=True, slots=True)
class TopicRole:
    """One topic the guard reads or writes: its name, what it is, and where it is set."""

    topic: str
    role: str
    where: str


def topic_role_clash(roles: list[TopicRole]) -> str | None:
    """Why two roles share a topic (the first such pair), or None when every topic has one role.

    A topic in two roles loops or leaks: the blocked topic as an input re-reads every blocked
    record as new input (without end); a partner topic as the consent topic feeds partner
    records into the state. An input named by a pattern (`^...`) is refused for the same
    reason: it could match any of them.
    """
    seen: dict[str, TopicRole] = {}
    for role in roles:
        if role.where == "input_topics" and role.topic.startswith("^"):
            return (
                f"input topic '{role.topic}' is a pattern: librdkafka would subscribe to every topic it "
                "matches, now or later, the guard's own outputs too; name each input topic"
            )
        first = seen.setdefault(role.topic, role)
        if first is not role:
            return (
                f"topic '{role.topic}' is both {first.role} ({first.where}) and {role.role} ({role.where}); "
                f"every topic has one role: change {role.where}"
            )
    return None


def guard_topics(
    input_topics: list[str],
    consent_topic: str,
    signup_status_topic: str,
    blocked_topic: str,
    forwarded_topic: str = "guard.forwarded",
) -> dict[str, str]:
    """Topic name -> what it is, for the topics the guard itself reads or writes."""
    topics = {topic: "an input topic" for topic in input_topics}
    topics[consent_topic] = "the consent state topic"
    topics[signup_status_topic] = "the sign-up status state topic"
    topics[blocked_topic] = "the blocked-event topic"
    topics[forwarded_topic] = "the forwarded-marker topic"
    return topics


def guard_topics_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """`guard_topics` as configured by PARTNER_GUARD_* variables, defaults elsewhere.

    For commands that check rules without a full configuration (`rules check`, `rules test`).
    """
    env = os.environ if environ is None else environ

    def setting(name: str) -> str:
        default = Settings.model_fields[name].default
        return env.get(ENV_PREFIX + name.upper()) or (
            default if isinstance(default, str) else ",".join(default)
        )

    inputs = _split_csv(setting("input_topics"))
    return guard_topics(
        inputs,
        setting("consent_topic"),
        setting("signup_status_topic"),
        setting("blocked_topic"),
        setting("forwarded_topic"),
    )


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
    explicit = {k: v for k, v in overrides.items() if v is not None}
    token = _FLAGS.set(explicit)
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = [_describe(err, values, config_file, explicit) for err in exc.errors()]
        problems += _unknown_env_hints(os.environ)
        where = f" (file {config_file})" if config_file else ""
        raise ConfigError("invalid configuration" + where + ": " + "; ".join(problems)) from None
    finally:
        _FLAGS.reset(token)


def _is_secret(setting: str) -> bool:
    return any(marker in setting for marker in SECRET_MARKERS) or setting.endswith("basic_auth")


def did_you_mean(name: str, known: list[str]) -> str:
    """` (did you mean 'x'?)` for a near miss, else ''."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _describe(
    err: Any, file_values: Mapping[str, Any], config_file: Path | None, flags: Mapping[str, Any]
) -> str:
    """One problem: the setting, where it came from, the value (unless secret), what is wrong."""
    loc = [str(p) for p in err["loc"]]
    message = str(err["msg"]).removeprefix("Value error, ")
    if not loc:  # a check across settings: its message names them; the input is everything
        return message
    setting = ".".join(loc)
    top = loc[0]
    env_name = ENV_PREFIX + top.upper()
    if err["type"] == "extra_forbidden":
        where = f" in {config_file}" if config_file else ""
        return f"unknown setting '{setting}'{where}{did_you_mean(top, list(Settings.model_fields))}"
    if top in flags and (top != "kafka" or (len(loc) > 1 and loc[1] in flags[top])):
        source = f" (flag --{top.replace('_', '-')})"
    elif top in ("kafka",) and len(loc) > 1 and _kafka_env_name(loc[1]) in os.environ:
        source = f" (env {_kafka_env_name(loc[1])})"
    elif top and env_name in os.environ:
        source = f" (env {env_name})"
    elif top and top in file_values and config_file is not None:
        source = f" (file {config_file})"
    else:
        source = ""
    shown = ""
    if err["type"] != "missing" and not _is_secret(setting) and "input" in err:
        shown = f" = {_masked(err['input'])!r}"
    if err["type"] == "missing":
        message = f"required: set {env_name} or '{top}' in the config file"
    return f"setting '{setting}'{shown}{source}: {message}"


def _masked(value: Any) -> Any:
    """A value safe to print: members of a mapping whose names look secret are masked."""
    if isinstance(value, Mapping):
        return {k: "***" if _is_secret(str(k)) else _masked(v) for k, v in value.items()}
    return value


def _kafka_env_name(prop: str) -> str:
    return KAFKA_ENV_PREFIX + prop.upper().replace(".", "_")


# PARTNER_GUARD_* variables that are not settings but are read elsewhere on purpose
_OTHER_ENV_PREFIXES = (
    KAFKA_ENV_PREFIX,
    "PARTNER_GUARD_KEY_",
    "PARTNER_GUARD_TEST_",
    "PARTNER_GUARD_PAYLOAD_KEYS",
)


def unknown_env_settings(environ: Mapping[str, str]) -> list[str]:
    """`PARTNER_GUARD_*` variables that name no setting (typos are otherwise silently ignored)."""
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX) and name not in known and not name.startswith(_OTHER_ENV_PREFIXES)
    )


def _unknown_env_hints(environ: Mapping[str, str]) -> list[str]:
    known = [ENV_PREFIX + name.upper() for name in Settings.model_fields]
    return [f"unknown variable {name}{did_you_mean(name, known)}" for name in unknown_env_settings(environ)]


def unknown_env_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """Warnings for set-but-unknown `PARTNER_GUARD_*` variables, with a did-you-mean."""
    return _unknown_env_hints(os.environ if environ is None else environ)
