"""Command-line flags generated from a stage's pydantic config, so flags, defaults and help cannot drift.

Every key of the config model becomes a flag: ``--<key>`` with ``-`` for ``_``, and a nested
key joins its path with ``-``: ``selfdistill.teacher`` is ``--selfdistill-teacher``,
``lora.r`` is ``--lora-r``, a study's ``train.selfdistill.teacher`` is
``--train-selfdistill-teacher``. The help text is the field's ``description`` (its attribute
docstring); the default shown is the model's. Kinds of flags:

* ``bool``: ``--key/--no-key``;
* a ``Literal``: one of its values (click checks the choice);
* a list: repeat the flag (``--train-only attention --train-only mlp``); lists of numbers or
  of fixed choices also take comma-separated values (``--unknown-ratios 0,50,100``);
* an optional block (``lora``, ``drift``): ``--lora/--no-lora`` turns it on with its defaults
  or off; a key of the block (``--lora-r 4``) turns it on too;
* anything else (mappings, mixed lists): a YAML value (``--compare-methods-overrides '{lora: {r: 4}}'``).

Values resolve as: model defaults < the ``--config`` YAML file < flags (:func:`knowtune.config.load_config`;
a flag changes one key of a YAML block and keeps the others).
"""

from __future__ import annotations

import enum
import functools
import inspect
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Optional, Union

import typer
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from knowtune.config import NULL
from knowtune.errors import ConfigError

#: A flag's kind: one value, a repeatable list, an on/off switch, an optional block's switch, or YAML text.
Kind = Literal["value", "list", "bool", "block", "yaml"]


@dataclass(frozen=True)
class Flag:
    """One generated flag: the config key it sets (``path``), its parameter name and option names."""

    path: tuple[str, ...]
    kind: Kind
    decls: tuple[str, ...]
    annotation: Any
    help: str
    shown_default: str | None
    commas: bool = False
    scalar_or_list: bool = False
    panel: str | None = None

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def param(self) -> str:
        return "cfg__" + "__".join(self.path)

    @property
    def name(self) -> str:
        """The main option name, e.g. ``--selfdistill-teacher``."""
        return self.decls[0].split("/")[0]

    def option(self) -> Any:
        show: bool | str = self.shown_default if self.shown_default is not None else False
        metavar = {"list": "VALUE", "yaml": "YAML"}.get(self.kind)
        return typer.Option(None, *self.decls, help=self.help, show_default=show, rich_help_panel=self.panel, metavar=metavar)


def flag_name(path: Sequence[str]) -> str:
    """``("selfdistill", "lambda_kl")`` -> ``--selfdistill-lambda-kl``."""
    return "--" + "-".join(part.replace("_", "-") for part in path)


def config_flags(model: type[BaseModel], *, aliases: Mapping[str, Sequence[str]] | None = None, exclude: Iterable[str] = (),
                 commas: Iterable[str] = (), panels: bool = False, defaults: BaseModel | None = None) -> list[Flag]:
    """The flags of every key of ``model`` (nested keys included), minus the dotted keys in ``exclude``
    (and keys under them). ``aliases``: extra option names per dotted key (``{"learning_rate": ["--lr"]}``);
    ``commas``: list keys whose values are split on commas; ``panels``: group nested keys by block in ``--help``;
    ``defaults``: the instance whose values the help shows (default: the model's defaults)."""
    flags: list[Flag] = []
    _collect(model, defaults if defaults is not None else _defaults_of(model), (), dict(aliases or {}), set(exclude), set(commas), panels, flags)
    names: dict[str, str] = {}
    for flag in flags:
        for decl in flag.decls:
            for name in decl.split("/"):
                if name in names:
                    raise RuntimeError(f"{model.__name__}: the flag {name} would set both {names[name]} and {flag.key}")
                names[name] = flag.key
    return flags


def _defaults_of(model: type[BaseModel]) -> BaseModel | None:
    try:
        return model()
    except Exception:  # a model with required keys: its fields' own defaults are shown
        return None


def _collect(model: type[BaseModel], defaults: BaseModel | None, prefix: tuple[str, ...], aliases: dict[str, Sequence[str]],
             exclude: set[str], commas: set[str], panels: bool, out: list[Flag]) -> None:
    panel = f"{'.'.join(prefix)}: settings" if panels and prefix else None
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        key = ".".join(path)
        if key in exclude:
            continue
        default = getattr(defaults, name) if defaults is not None else field.get_default(call_default_factory=True)
        default = None if default is PydanticUndefined else default
        help_text = (field.description or "").strip()
        block, optional = _nested_model(field.annotation)
        if block is not None:
            if optional:
                out.append(Flag(path, "block", (f"{flag_name(path)}/--no-{flag_name(path)[2:]}", *aliases.get(key, ())), Optional[bool],
                                f"{help_text} On with its defaults; off with --no-{flag_name(path)[2:]}.".strip(),
                                "off" if default is None else "on", panel=panel))
            block_defaults = default if isinstance(default, BaseModel) else _defaults_of(block)
            _collect(block, block_defaults, path, aliases, exclude, commas, panels, out)
            continue
        out.append(_flag(path, field.annotation, help_text, default, aliases.get(key, ()), key in commas, panel))


def _flag(path: tuple[str, ...], annotation: Any, help_text: str, default: Any, aliases: Sequence[str], commas: bool,
          panel: str | None) -> Flag:
    options = [arg for arg in _union_args(annotation) if arg is not type(None)]
    decls = (flag_name(path), *aliases)
    shown = _show(default)
    if len(options) == 1 and options[0] is bool:
        bool_decls = (f"{flag_name(path)}/--no-{flag_name(path)[2:]}", *aliases)
        return Flag(path, "bool", bool_decls, Optional[bool], help_text, shown, panel=panel)
    lists = [arg for arg in options if typing.get_origin(arg) in (list, tuple)]
    if len(lists) == 1 and all(arg is str or arg is lists[0] for arg in options):
        (item,) = typing.get_args(lists[0])[:1] or (str,)
        simple = item in (int, float) or _choices(item) is not None
        if item in (str, int, float) or _choices(item) is not None:
            return Flag(path, "list", decls, Optional[list[str]], help_text, shown, commas=commas or simple,
                        scalar_or_list=str in options, panel=panel)
    if len(options) == 1:
        (kind,) = options
        choices = _choices(kind)
        if choices is not None and all(isinstance(c, str) for c in choices):
            return Flag(path, "value", decls, Optional[_choice_enum(path, choices)], help_text, shown, panel=panel)
        if kind in (str, int, float):
            return Flag(path, "value", decls, Optional[kind], help_text, shown, panel=panel)
    return Flag(path, "yaml", decls, Optional[str], f"{help_text} (YAML)".strip(), shown, panel=panel)


def _union_args(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _nested_model(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """``(Model, optional)`` when the field holds a model (or ``Model | None``)."""
    args = _union_args(annotation)
    models = [arg for arg in args if isinstance(arg, type) and issubclass(arg, BaseModel)]
    others = [arg for arg in args if arg is not type(None) and arg not in models]
    if len(models) == 1 and not others:
        return models[0], type(None) in args
    return None, False


def _choices(annotation: Any) -> tuple[Any, ...] | None:
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None


@functools.lru_cache(maxsize=None)
def _choice_enum(path: tuple[str, ...], choices: tuple[str, ...]) -> type[enum.Enum]:
    return enum.Enum("_".join(path), {choice: choice for choice in choices}, type=str)


def _show(value: Any) -> str | None:
    """The default as the help shows it (YAML-like): ``true``, ``0.0003``, ``0, 25, 50``, ``"I don't know"``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, BaseModel):
        return None
    if isinstance(value, (list, tuple)):
        return ", ".join(_show(item) or "null" for item in value) if value else "[]"
    if isinstance(value, str):
        return value if value and value.strip() == value and value.isprintable() and "," not in value else json.dumps(value)
    if isinstance(value, dict):
        return json.dumps(value) if value else "{}"
    return str(value)


def overrides_from(flags: Sequence[Flag], values: Mapping[str, Any]) -> dict[str, Any]:
    """The nested overrides the given flags (``values`` by parameter name) make; unset flags are left out."""
    overrides: dict[str, Any] = {}
    given = {flag.key: flag for flag in flags if _given(values.get(flag.param))}
    for flag in given.values():
        value = values[flag.param]
        if flag.kind == "block":
            if value is False:
                inner = [other for other in given.values() if other.path[: len(flag.path)] == flag.path and other is not flag]
                if inner:
                    raise ConfigError(f"--no-{flag.name[2:]} and {inner[0].name} contradict each other", fix="drop one of them")
                _put(overrides, flag.path, NULL)
            else:
                _put(overrides, flag.path, {}, keep=True)
            continue
        _put(overrides, flag.path, _convert(flag, value))
    return overrides


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, (list, tuple)) and not value)


def _convert(flag: Flag, value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if flag.kind == "list":
        items = [part for item in value for part in ([p.strip() for p in item.split(",")] if flag.commas else [item]) if part]  # "\n" stays
        return items[0] if flag.scalar_or_list and len(items) == 1 else items
    if flag.kind == "yaml":
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise ConfigError(f"{flag.name}: not a YAML value: {error}", fix=f"quote the value, e.g. {flag.name} '{{key: value}}'") from None
    return value


def _put(tree: dict[str, Any], path: tuple[str, ...], value: Any, *, keep: bool = False) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    if keep and path[-1] in tree:
        return
    tree[path[-1]] = value


def with_config_flags(model: type[BaseModel], **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command: add a flag for every key of ``model`` (:func:`config_flags` takes
    ``options``) after the command's own parameters; the command gets them as ``overrides``, a nested
    mapping for :func:`knowtune.config.load_config`, and ``flags`` (key -> flag name) for its messages."""
    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        flags = config_flags(model, **options)
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name not in ("overrides", "flags")]
        clash = {flag.name for flag in flags} & {decl for p in own for decl in getattr(p.default, "param_decls", None) or ()}
        if clash:
            raise RuntimeError(f"{command.__name__}: {', '.join(sorted(clash))} is both a command option and a config flag")
        generated = [inspect.Parameter(flag.param, inspect.Parameter.KEYWORD_ONLY, default=flag.option(), annotation=flag.annotation)
                     for flag in flags]
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            values = {flag.param: kwargs.pop(flag.param, None) for flag in flags}
            return command(**kwargs, overrides=overrides_from(flags, values), flags={flag.key: flag.name for flag in flags})

        del wrapper.__wrapped__
        wrapper.__signature__ = signature.replace(parameters=[*own, *generated])
        wrapper.__annotations__ = {p.name: p.annotation for p in (*own, *generated)}
        wrapper.config_flags = flags
        return wrapper

    return decorate
