"""The settings model as command-line options and as a reference page, written once.

Every field of `Settings` becomes an option of `partner-guard run` (and `check-config`):
`--batch-size`, booleans as `--dev/--no-dev`, choices from the model's literals, the
librdkafka passthrough as repeatable `--kafka PROPERTY=VALUE`. Each option's help names its
environment variable, its default and its key in the YAML file. Options are passed to the
model as given (strings), so a bad value is refused by the model with the same message as
from the environment or the file. The same specs render `docs/settings.md`
(`partner-guard settings-doc`).
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from streams.runtime.config import ENV_PREFIX, KAFKA_ENV_PREFIX, ConfigError, Settings

# Flags whose names predate the generated ones (kept as aliases).
ALIASES = {"rules_dir": ("--rules",)}
PANEL = "Settings (flags > environment > file)"


Kind = Literal["bool", "choice", "pairs", "secret", "value"]


@dataclass(frozen=True)
class SettingSpec:
    """One setting: its names everywhere, its default as text, what it is."""

    name: str
    flag: str
    env: str
    default: str
    description: str
    kind: Kind
    choices: tuple[str, ...] = ()
    metavar: str = "TEXT"

    @property
    def flags(self) -> tuple[str, ...]:
        """The option's flags: `--x/--no-x` for a boolean, the flag and its aliases otherwise."""
        if self.kind == "bool":
            return (f"{self.flag}/--no-{self.flag[2:]}",)
        return (self.flag, *ALIASES.get(self.name, ()))

    def help(self) -> str:
        """The option's help line: description, environment variable, file key."""
        return f"{self.description} [env {self.env}; file key {self.name}; default {self.default}]"


def _inner(annotation: Any) -> Any:
    """The annotation without `Annotated`, `| None` and the `list[...]` around a literal."""
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def _spec(name: str, field: FieldInfo) -> SettingSpec:
    annotation = _inner(field.annotation)
    origin = typing.get_origin(annotation)
    flag = "--" + name.replace("_", "-")
    env = KAFKA_ENV_PREFIX + "<PROPERTY>" if name == "kafka" else ENV_PREFIX + name.upper()
    description = field.description or name.replace("_", " ")
    default = _default_text(field)

    def spec(kind: Kind, choices: tuple[str, ...] = (), metavar: str = "TEXT") -> SettingSpec:
        return SettingSpec(name, flag, env, default, description, kind, choices, metavar)

    if annotation is bool:
        return spec("bool")
    if annotation is SecretStr:
        return spec("secret")
    if origin is Literal:
        return spec("choice", tuple(str(a) for a in typing.get_args(annotation)))
    if name == "kafka":
        return spec("pairs", metavar="PROP=VALUE")
    if origin is list:
        return spec("value", metavar="A,B,...")
    if origin is dict:
        return spec("value", metavar="TOPIC=FORMAT,...")
    return spec("value", metavar={int: "INTEGER", Path: "PATH"}.get(annotation, "TEXT"))


def setting_specs() -> list[SettingSpec]:
    """Every setting of the model, in the model's order."""
    return [_spec(name, field) for name, field in Settings.model_fields.items()]


def _option(spec: SettingSpec) -> tuple[Any, Any]:
    """The annotation and default of the option for one setting."""
    common: dict[str, Any] = {"help": spec.help(), "rich_help_panel": PANEL, "show_default": False}
    if spec.kind == "bool":
        return Annotated[bool | None, typer.Option(*spec.flags, **common)], None
    if spec.kind == "pairs":
        option = typer.Option(*spec.flags, metavar=spec.metavar, **common)
        return Annotated[list[str] | None, option], None
    if spec.kind == "choice":  # an enum: typer shows and checks its values
        choices = enum.Enum(spec.name, {choice: choice for choice in spec.choices}, type=str)  # type: ignore[misc]
        return Annotated[choices | None, typer.Option(*spec.flags, **common)], None
    return Annotated[str | None, typer.Option(*spec.flags, metavar=spec.metavar, **common)], None


def with_setting_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` (which takes `**settings`) one option for every settable setting.

    Its own parameters come first; the rest of its signature is generated. The secret
    setting (`schema_registry_basic_auth`) has no flag: a command line is visible to every
    user of the host (`ps`), so it comes from the environment or the file only.
    """
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    generated = []
    for spec in setting_specs():
        if spec.kind == "secret":
            continue
        annotation, default = _option(spec)
        generated.append(
            inspect.Parameter(
                spec.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
            )
        )
    command.__signature__ = inspect.Signature([*own, *generated])  # type: ignore[attr-defined]
    return command


def settings_epilog() -> str:
    """The end of `run --help`: what has no flag, and where the reference is."""
    secrets = [spec for spec in setting_specs() if spec.kind == "secret"]
    named = ", ".join(f"{spec.name} (env {spec.env} or the file)" for spec in secrets)
    return (
        f"Secrets have no flag (a command line is visible to every user of the host): {named}; "
        "partner keys: PARTNER_GUARD_KEY_<PARTNER> or --keys-dir. Every setting: docs/settings.md "
        "(partner-guard settings-doc)."
    )


def explicit_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """The settings given on the command line, for `load_settings` (absent ones left out)."""
    explicit: dict[str, Any] = {}
    for name, value in options.items():
        if value is None or name not in Settings.model_fields:
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        if name == "kafka":
            pairs = [item.split("=", 1) for item in value]
            bad = [item for item, pair in zip(value, pairs, strict=True) if len(pair) != 2 or not pair[0]]
            if bad:
                raise ConfigError(f"--kafka {bad[0]!r}: expected PROPERTY=VALUE (e.g. --kafka acks=all)")
            value = {k.strip(): v for k, v in pairs}
        explicit[name] = value
    return explicit


def setting_arguments(explicit: Mapping[str, Any], leave_out: tuple[str, ...] = ()) -> list[str]:
    """Command-line flags that give `explicit` again (for the workers of `run --workers N`)."""
    specs = {spec.name: spec for spec in setting_specs()}
    args: list[str] = []
    for name, value in explicit.items():
        if name in leave_out:
            continue
        spec = specs[name]
        if spec.kind == "bool":
            args.append(spec.flag if value else f"--no-{spec.flag[2:]}")
        elif spec.kind == "pairs":
            for key, item in value.items():
                args += [spec.flag, f"{key}={item}"]
        else:
            args += [spec.flag, str(value)]
    return args


def settings_markdown() -> str:
    """`docs/settings.md`: every setting with its flag, environment variable, default, file key."""
    lines = [
        "# Settings reference",
        "",
        "<!-- generated from the settings model (streams/runtime/config.py) by",
        "     `partner-guard settings-doc > docs/settings.md`; a test fails when it is stale -->",
        "",
        "`partner-guard run` and `partner-guard check-config` read every setting from, in order of",
        "precedence: a command-line flag, a `PARTNER_GUARD_<NAME>` environment variable, and the YAML",
        "file given with `--config` (its keys are the setting names below). `produce` and `tail` read",
        "the same settings for their Kafka connection. Lists are comma-separated in flags and",
        "variables (`a,b`), and YAML lists in the file; mappings are `key=value,...` in flags and",
        "variables, YAML mappings in the file. A setting with no flag is a secret: set it in the",
        "environment or the file, never on a command line.",
        "",
        "| setting (file key) | flag | environment variable | default | meaning |",
        "|---|---|---|---|---|",
    ]
    for spec in setting_specs():
        flag = "—" if spec.kind == "secret" else " ".join(f"`{f}`" for f in spec.flags)
        if spec.kind == "pairs":
            flag = f"`{spec.flag} {spec.metavar}` (repeatable)"
        meaning = spec.description
        if spec.kind == "choice":
            meaning += " (one of " + ", ".join(f"`{c}`" for c in spec.choices) + ")"
        default = {"required": "required", "none": "—"}.get(spec.default, f"`{spec.default}`")
        cells = (f"`{spec.name}`", flag, f"`{spec.env}`", default, meaning.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "librdkafka properties the guard sets itself (`bootstrap.servers`, `group.id`,",
        "`transactional.id`, `enable.auto.commit`, `isolation.level`, `enable.idempotence`) are",
        "refused in `kafka`: use the matching setting. Secret-looking values are never printed.",
        "",
    ]
    return "\n".join(lines)
