"""One validated config per stage: a YAML file plus CLI overrides, saved beside outputs.

Every stage config is a pydantic model with ``extra="forbid"``, so an unknown key is an
error that names the key. Values resolve as: model defaults < YAML file < CLI flags; a flag
of a nested key (``--selfdistill-teacher``) changes that key of the YAML block and keeps the
others. Each field's description (its attribute docstring) is its flag's help
(:mod:`knowtune.cli.options`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer

from knowtune.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class _Null:
    def __repr__(self) -> str:
        return "NULL"


#: An override that sets its key to null (``--no-lora``); a plain ``None`` override means "not given".
NULL: Any = _Null()


class StageConfig(BaseModel):
    """Base class of stage configs: unknown keys are errors, values are validated on assignment;
    the string under a field (its attribute docstring) is its description and its CLI flag's help."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), use_attribute_docstrings=True)
    #: Fields added after a config was first saved by users, left out of its dump while at these defaults, so saved
    #: configs (and the run and protocol hashes made of them) stay as they were.
    ADDED_DEFAULTS: ClassVar[dict[str, Any]] = {}

    @model_serializer(mode="wrap")
    def _without_added_defaults(self, handler) -> dict[str, Any]:
        record = handler(self)
        for key, default in self.ADDED_DEFAULTS.items():
            if key in record and record[key] == default:
                del record[key]
        return record


def load_config(cls: type[ConfigT], path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                flags: dict[str, str] | None = None, *, base: BaseModel | None = None) -> ConfigT:
    """Build ``cls`` from an optional YAML file and CLI overrides (``None`` values are ignored, :data:`NULL`
    sets null; a mapping updates the YAML's mapping key by key). ``flags`` (dotted key -> flag name)
    lets an invalid value name the flag that set it. ``base``: the values to start from instead of the
    model defaults (the YAML file replaces it)."""
    values: dict[str, Any] = base.model_dump() if base is not None and path is None else {}
    source = "command-line options"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found", fix="pass an existing YAML file to --config")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid YAML: {error}", fix="fix the YAML syntax") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys to values, got {type(loaded).__name__}")
        values.update(loaded)
        source = str(path)
    given = _merge(values, overrides or {})
    try:
        return cls.model_validate(values)
    except ValidationError as error:
        raise ConfigError(_describe_validation_error(error, source, {k: v for k, v in (flags or {}).items() if k in given})) from None


def _merge(values: dict[str, Any], overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """Apply ``overrides`` to ``values`` in place; returns the dotted keys they set."""
    given = []
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            given += _merge(values[key], value, f"{prefix}{key}.")
            continue
        values[key] = None if value is NULL else (dict(value) if isinstance(value, dict) else value)
        given += [f"{prefix}{key}", *(f"{prefix}{key}.{inner}" for inner in _keys(value))]
    return given


def _keys(value: Any, prefix: str = "") -> list[str]:
    if not isinstance(value, dict):
        return []
    return [k for key, inner in value.items() for k in (f"{prefix}{key}", *_keys(inner, f"{prefix}{key}."))]


def _describe_validation_error(error: ValidationError, source: str, flags: dict[str, str] | None = None) -> str:
    lines = [f"{source}: invalid config"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(root)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check its spelling; see the stage's documented keys)")
        else:
            flag = next((flags[k] for k in _prefixes(item["loc"]) if k in (flags or {})), None)
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})" + (f"; set by {flag}" if flag else ""))
    return "\n".join(lines)


def _prefixes(loc: tuple[Any, ...]) -> list[str]:
    """``("lora", "r")`` -> ``["lora.r", "lora"]``: the longest key first."""
    parts = [str(part) for part in loc]
    return [".".join(parts[:n]) for n in range(len(parts), 0, -1)]


def save_config(config: BaseModel, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from knowtune.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
