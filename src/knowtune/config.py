"""One validated config per stage: a YAML file plus CLI overrides, saved beside outputs.

Every stage config is a pydantic model with ``extra="forbid"``, so an unknown key is an
error that names the key. Values resolve as: model defaults < YAML file < CLI flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from knowtune.errors import ConfigError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class StageConfig(BaseModel):
    """Base class of stage configs: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def load_config(cls: type[ConfigT], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> ConfigT:
    """Build ``cls`` from an optional YAML file and CLI overrides (``None`` values are ignored)."""
    values: dict[str, Any] = {}
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
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    try:
        return cls.model_validate(values)
    except ValidationError as error:
        raise ConfigError(_describe_validation_error(error, source)) from None


def _describe_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(root)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (check its spelling; see the stage's documented keys)")
        else:
            lines.append(f"  {key}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def save_config(config: BaseModel, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from knowtune.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
