"""Configuration files and overrides: one way for every command (``train``, ``sweep``, ``ingest``, ``serve``).

A config is a frozen dataclass (fields with defaults, checks in ``__post_init__``). :func:`load_config` reads a YAML
file (optional) and dotted ``key=value`` overrides into one, checking every value and naming the key, the value, where
it came from and the fix; :func:`from_dict` decodes a nested mapping (e.g. ``asdict`` read back from JSON);
:func:`set_dotted` / :func:`apply_overrides` set dotted keys of a nested mapping; :func:`flatten` turns a nested
mapping into dotted keys (model overrides, logged params).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigValueError(ValueError):
    """A bad config value, naming its dotted key, the value, what is expected and (once :func:`load_config` knows)
    where the value came from and how to fix it.

    Attributes:
        key: dotted key (``train.optim.lr``); a dataclass's own checks give the field name, :func:`from_dict`
            prefixes it with the enclosing sections.
        value: the bad value.
        expected: what would have been accepted.
        origin: where the value came from (``the command-line override 'train.optim.lr=nan'``, a YAML path).
        fix: how to fix it.
        detail: a message that replaces ``expected ..., got ...`` (unknown keys).
    """

    def __init__(
        self,
        key: str,
        value: Any,
        expected: str,
        *,
        origin: str | None = None,
        fix: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.key, self.value, self.expected = key, value, expected
        self.origin, self.fix, self.detail = origin, fix, detail
        super().__init__(self.message())

    def message(self) -> str:
        """``key: expected X, got V (from ORIGIN); fix: FIX``."""
        text = f"{self.key}: {self.detail or f'expected {self.expected}, got {self.value!r}'}"
        if self.origin:
            text += f" (from {self.origin})"
        if self.fix:
            text += f"; fix: {self.fix}"
        return text

    def located(self, *, key: str | None = None, origin: str | None = None, fix: str | None = None) -> ConfigValueError:
        """A copy with ``key``, ``origin`` and ``fix`` replaced where given."""
        return ConfigValueError(
            key or self.key,
            self.value,
            self.expected,
            origin=origin or self.origin,
            fix=fix or self.fix,
            detail=self.detail,
        )


def require(key: str, value: Any, ok: bool, expected: str) -> None:
    """Raise :class:`ConfigValueError` for ``key`` unless ``ok`` (the checks of the config dataclasses).

    Raises:
        ConfigValueError: ``ok`` is false.
    """
    if not ok:
        raise ConfigValueError(key, value, expected)


def flatten(tree: Mapping[str, Any], prefix: str = "", *, keep_empty: bool = False) -> dict[str, Any]:
    """``{"text": {"freeze": False}}`` -> ``{"text.freeze": False}`` (what ``build_model`` takes; logged params).

    ``keep_empty``: an empty mapping stays a value (``{"a": {}}`` -> ``{"a": {}}``) instead of vanishing.
    """
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and (value or not keep_empty):
            out |= flatten(value, f"{prefix}{key}.", keep_empty=keep_empty)
        else:
            out[f"{prefix}{key}"] = value
    return out


def is_number(value: object) -> bool:
    """An int or float (bools excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Check/convert a YAML value to the annotated type ``tp``.

    Raises:
        ConfigValueError: naming the dotted key ``where``.
    """
    origin = typing.get_origin(tp)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigValueError(where, value, "a mapping")
        return _deep_copy(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigValueError(where, value, f"a mapping of {tp.__name__} fields")
        return from_dict(tp, value, prefix=where + ".")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigValueError(where, value, f"one of {list(typing.get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(tp)):
            return None
        errors: list[ConfigValueError] = []
        for arg in args:
            try:
                return _convert(arg, value, where)
            except ConfigValueError as err:
                errors.append(err)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigValueError(where, value, " or ".join(e.expected for e in errors))
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, Sequence) or isinstance(value, str):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigValueError(where, list(value), f"{len(args)} values")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigValueError(where, value, "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigValueError(where, value, "an integer")
        return value
    if tp is float:
        number = None
        if not isinstance(value, bool) and isinstance(value, int | float | str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):  # YAML reads nan/inf overrides as strings, .nan as floats
            raise ConfigValueError(where, value, "a finite number")
        return number
    if tp is str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise ConfigValueError(where, value, "a string")
        return str(value)
    return value


def from_dict(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """Build the frozen dataclass ``cls`` from a (nested) mapping, validating names, types and values.

    Raises:
        ConfigValueError: naming the dotted key of an unknown field or a bad value.
        ValueError: a check of ``cls`` that names no field (the message is prefixed with ``prefix``).
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        keys = [prefix + k for k in unknown]
        raise ConfigValueError(
            keys[0], data[unknown[0]], f"one of {names}", detail=f"unknown config key(s) {keys}; valid keys: {names}"
        )
    kwargs = {k: _convert(hints[k], v, prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigValueError as err:
        raise err.located(key=prefix + err.key) from None
    except ValueError as err:
        raise ValueError(f"{prefix or cls.__name__}: {err}") from None


def set_dotted(data: dict[str, Any], key: str, value: Any, *, create: bool = True, what: str = "the config") -> None:
    """Set the dotted ``key`` (``optim.lr``) of the nested dict ``data`` in place.

    Args:
        data: the nested dict.
        key: the dotted key.
        value: the new value.
        create: create missing sections (unknown names are then reported by :func:`from_dict`, which knows the
            fields); False: every section and the field must exist already.
        what: what ``data`` is, for messages.

    Raises:
        ValueError: a part of the key is a value, not a section; or (``create=False``) a section or field is missing.
    """
    *sections, last = key.split(".")
    node = data
    for part in sections:
        child = node.setdefault(part, {}) if create else node.get(part)
        if not isinstance(child, dict):
            raise ValueError(
                f"{part!r} is a value, not a section" if create else f"{part!r} is not a section of {what}"
            )
        node = child
    if not create and last not in node:
        raise ValueError(f"unknown field {last!r}: not a field of {what}; valid: {sorted(node)}")
    node[last] = value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a nested dict (values parsed as YAML); returns a new dict.

    Raises:
        ValueError: if an override is not of the form ``key=value``.
    """
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form dotted.key=value (e.g. optim.lr=2e-5)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({err})") from None
        try:
            set_dotted(out, key.strip(), value)
        except ValueError as err:
            raise ValueError(f"override {item!r}: {err}") from None
    return out


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def _default_of(cls: type, key: str) -> Any:
    """The default value of dotted ``key`` in the dataclass ``cls`` (``dataclasses.MISSING`` when none is known)."""
    node: Any = cls
    value: Any = dataclasses.MISSING
    for part in key.split("."):
        part = part.split("[")[0]
        if not (dataclasses.is_dataclass(node) or dataclasses.is_dataclass(type(node))):
            return dataclasses.MISSING
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return dataclasses.MISSING
        f = fields[part]
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            return dataclasses.MISSING
        node = value
    return value


def _origin_and_fix(err: ConfigValueError, cls: type, path: Path | None, overrides: Sequence[str]) -> tuple[str, str]:
    """Where the bad value of ``err.key`` came from (the last override that set it or a section above it, else the
    YAML file, else a default) and how to fix it."""
    key = err.key.split("[")[0]
    default = _default_of(cls, key)
    example = ""
    if default is not dataclasses.MISSING and default not in (None, "") and default != err.value:
        shown = list(default) if isinstance(default, tuple) else default
        if not dataclasses.is_dataclass(shown) and not isinstance(shown, dict):
            example = f", e.g. {key}={shown} (the default)"
    for item in reversed(overrides):
        okey = item.partition("=")[0].strip()
        if key == okey or key.startswith(okey + ".") or okey.startswith(key + "."):
            if err.detail:
                return f"the command-line override {item!r}", "remove the override or correct its key"
            return f"the command-line override {item!r}", f"change the override to {err.expected}{example}"
    if path is not None:
        if err.detail:
            return str(path), f"remove or rename {key} in {path}"
        return str(path), f"correct {key} in {path} (or override it on the command line){example}"
    return "the defaults", f"set {key} on the command line ({key}=...) or in the YAML file{example}"


def load_config(cls: type, path: str | Path | None = None, overrides: Sequence[str] = (), what: str = "config") -> Any:
    """Read a YAML file (optional) and dotted ``key=value`` overrides into the frozen dataclass ``cls``.

    Every value is checked (types, finite numbers, ranges) before anything runs; an error names the dotted key, the
    bad value, where it came from (the override ``key=value`` or the YAML file) and the fix.

    Raises:
        FileNotFoundError: if ``path`` does not exist (the message says which ``what``).
        ConfigValueError: a bad value (its message as above).
        ValueError: a malformed file or override.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{what} {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    data = apply_overrides(data, overrides)
    try:
        return from_dict(cls, data)
    except ConfigValueError as err:
        origin, fix = _origin_and_fix(err, cls, path, overrides)
        raise err.located(origin=origin, fix=fix) from None
    except ValueError as err:
        where = f"{path}" if path is not None else "overrides"
        if overrides:
            where += f" + overrides {list(overrides)}" if path is not None else f" {list(overrides)}"
        raise ValueError(f"{where}: {err}") from None


OFF_VALUES = frozenset({"0", "false", "off", "no"})


def env_switch(name: str) -> bool:
    """An on/off environment switch that is on unless set to ``0``, ``false``, ``off`` or ``no`` (any case)."""
    return os.environ.get(name, "1").strip().lower() not in OFF_VALUES
