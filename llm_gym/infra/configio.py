"""Strict mapping between plain dicts (TOML/JSON files, ``--set`` overrides) and config dataclasses.

The project's configs are frozen dataclasses with defaults, a docstring under each field
and validation in ``__post_init__``. This module turns a parsed file into such a config
and back, and refuses anything it cannot map exactly, naming the dotted key path and the
fix::

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Sampling:
    ...     temperature: float = 1.0
    >>> from_dict(Sampling, {"temperature": 1})
    Sampling(temperature=1.0)
    >>> from_dict(Sampling, {"temprature": 0.5})
    Traceback (most recent call last):
    ...
    llm_gym.infra.configio.ConfigError: temprature: unknown key; known keys of Sampling: temperature (did you mean 'temperature'?)

Type rules (``from_dict``):

- ``int`` takes an int, never a bool; ``float`` takes an int or a float (stored as float),
  never a bool; ``bool`` takes only true/false; ``str`` only a string.
- ``X | None`` takes None. TOML has no null, so the strings ``"none"`` and ``"None"`` also
  mean None for an Optional field (``--set ppo.clip_range_vf=none``); this holds for
  ``str | None`` too, where those two strings cannot be given as text.
- ``Literal[...]`` takes one of its values (same type: ``True`` is not ``1``).
- A nested dataclass takes a table; ``dict[str, X]`` a table whose values are converted as
  ``X`` (path ``key.name``); ``list[X]`` and ``tuple[X, ...]`` an array whose items are
  converted as ``X`` (path ``key[i]``).
- Keys missing from the table take the dataclass default; a field without a default must
  be given. A nested table is merged onto its field's default (see ``from_dict``); a
  ``dict[str, X]`` table replaces the default dict. Errors raised by a dataclass's own ``__post_init__`` come back as
  ``ConfigError`` prefixed with the path of its table.

Every config calls `check_finite` first thing in its ``__post_init__``: TOML and ``--set`` can
spell ``nan`` and ``inf``, and a range check such as ``kl_coef < 0`` lets both through.

Only stdlib is used, so reading a config never imports torch.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import inspect
import json
import math
import numbers
import os
import re
import reprlib
import textwrap
import tomllib
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

__all__ = [
    "ConfigError",
    "apply_overrides",
    "check_finite",
    "field_docs",
    "from_dict",
    "load_config",
    "parse_override",
    "read_config_file",
    "to_dict",
]

T = TypeVar("T")

_OVERRIDE_EXAMPLE = "--set ppo.kl_coef=0.1"
_NONE_STRINGS = ("none", "None")

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key path and how to fix it."""


# --------------------------------------------------------------------------- check_finite


def check_finite(config: Any, *, allow_inf: Collection[str] = ()) -> None:
    """Refuse NaN and infinity in every float field of the dataclass instance `config`.

    Called first in each config's ``__post_init__``: a hyperparameter of NaN or inf passes
    range checks such as ``kl_coef < 0`` (every comparison with NaN is false) and then
    fails, or silently poisons the numbers, after hours of earlier stages. A field counts
    as a float field by its value (a float, or a list or tuple holding floats), so a field
    added later is covered without touching this. Nested dataclasses are not walked: each
    checks itself.

    Args:
        config: A dataclass instance.
        allow_inf: Names of fields where +-inf means something (``kl_explosion = inf``: never
            warn); NaN is refused there too. The config's own range check still applies.

    Raises:
        ValueError: ``<Class>.<field> must be a finite number, got nan`` with the default as a
            working value.

    >>> @dataclasses.dataclass(frozen=True)
    ... class Adam:
    ...     lr: float = 1e-3
    ...     def __post_init__(self) -> None:
    ...         check_finite(self)
    >>> Adam(lr=float("inf"))
    Traceback (most recent call last):
    ...
    ValueError: Adam.lr must be a finite number, got inf (the default is 0.001)
    """
    if not (dataclasses.is_dataclass(config) and not isinstance(config, type)):
        raise TypeError(f"check_finite needs a dataclass instance, got {config!r}")
    cls = type(config)
    names = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(allow_inf) - names)
    if unknown:
        raise TypeError(f"check_finite: {cls.__name__} has no field(s) {unknown} (allow_inf names fields)")
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if not isinstance(item, numbers.Real) or isinstance(item, numbers.Integral) or math.isfinite(item):
                continue
            if f.name in allow_inf and not math.isnan(item):
                continue
            wanted = "a number or inf" if f.name in allow_inf else "a finite number"
            default = _default(f)
            hint = f" (the default is {default!r})" if default is not None else ""
            raise ValueError(f"{cls.__name__}.{f.name} must be {wanted}, got {value!r}{hint}")


# --------------------------------------------------------------------------- from_dict


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "", base: Any = None) -> T:
    """Build the dataclass `cls` from the table `data`, recursively and strictly.

    Args:
        cls: A dataclass type (its annotations may be strings; they are resolved with
            ``typing.get_type_hints``).
        data: The table, e.g. from ``tomllib.loads``. Missing keys take the defaults.
        path: Dotted key path of `data` in the whole config, used in error messages
            (``""`` for the top level).
        base: An instance of `cls` whose values the keys missing from `data` take
            (default: the dataclass's own defaults). A nested table is merged onto the
            value its field has in `base` (or its default), so ``[ppo.ppo.config]
            kl_coef = 0.1`` changes that one value of the run's default config and keeps
            the others. A ``dict[str, X]`` table is not merged: it replaces the default
            dict, each of its entries starting from ``X``'s defaults.

    Raises:
        ConfigError: An unknown key (with a "did you mean" hint), a missing required key,
            a value of the wrong type, or a value the dataclass's ``__post_init__`` rejects;
            the message starts with the dotted path of the offending key.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    where = path or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table of {cls.__name__} settings, got {_show(data)}")
    hints = _type_hints(cls)
    init_fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in init_fields:
            known = ", ".join(sorted(init_fields)) or "(none)"
            close = difflib.get_close_matches(str(key), list(init_fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{_join(path, str(key))}: unknown key; known keys of {cls.__name__}: {known}{hint}")
    kwargs: dict[str, Any] = {}
    for name, f in init_fields.items():
        key_path = _join(path, name)
        tp = hints.get(name, Any)
        if name in data:
            value = data[name]
            inherited = getattr(base, name) if base is not None else _default(f)
            if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, Mapping) and isinstance(inherited, tp):
                kwargs[name] = from_dict(tp, value, key_path, base=inherited)
            else:
                kwargs[name] = _convert(value, tp, key_path)
        elif base is not None:
            kwargs[name] = getattr(base, name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key_path}: missing required key of {cls.__name__}; set it in the file or with --set {key_path}=...")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from err


def _default(f: dataclasses.Field) -> Any:
    """The field's default value (a fresh one from its factory), or None when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _type_hints(cls: type) -> dict[str, Any]:
    """The resolved field types of `cls`, with a clear error when an annotation cannot be resolved."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError) as err:
        raise TypeError(f"cannot resolve the type annotations of {cls.__qualname__}: {err}") from err


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _show(value: Any) -> str:
    """`value` for an error message: a short repr and its type, as ``'abc' (str)``."""
    return f"{_repr.repr(value)} ({type(value).__name__})"


def _describe(tp: Any) -> str:
    """How a type reads in an error message ("an integer", "a table of SamplingConfig settings")."""
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"a table of {tp.__name__} settings"
    origin = typing.get_origin(tp)
    if origin in (list, tuple) or tp in (list, tuple):
        return "an array"
    if origin is dict or tp is dict:
        return "a table"
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    return getattr(tp, "__name__", repr(tp))


def _is_scalar(tp: Any) -> bool:
    """Whether `tp` is a single TOML value (not a table or an array)."""
    return tp in (bool, int, float, str) or typing.get_origin(tp) is Literal


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against the type `tp` and return it in the field's form (float, tuple, dataclass)."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin is Union or origin is types.UnionType:
        members = [a for a in args if a is not type(None)]
        if len(members) < len(args):  # Optional
            if value is None or (isinstance(value, str) and value in _NONE_STRINGS):
                return None
        optional = len(members) < len(args)
        if len(members) == 1 and not (optional and _is_scalar(members[0])):
            return _convert(value, members[0], path)  # its own error names the deeper path
        for member in members:
            try:
                return _convert(value, member, path)
            except ConfigError:
                pass
        wanted = " or ".join(_describe(m) for m in members)
        raise ConfigError(f"{path}: expected {wanted}{' or none' if optional else ''}, got {_show(value)}")

    if origin is Literal:
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return value
        choices = ", ".join(repr(a) for a in args)
        raise ConfigError(f"{path}: expected one of {choices}, got {_show(value)}")

    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        hint = " (a whole number, without a decimal point)" if isinstance(value, float) else ""
        raise ConfigError(f"{path}: expected an integer{hint}, got {_show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string (quote it in TOML: \"...\"), got {_show(value)}")

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a table of {tp.__name__} settings, got {_show(value)}")
        return from_dict(tp, value, path)

    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a table, got {_show(value)}")
        key_tp, value_tp = args if args else (Any, Any)
        out: dict[Any, Any] = {}
        for key, item in value.items():
            item_path = _join(path, str(key))
            out[_convert(key, key_tp, item_path)] = _convert(item, value_tp, item_path)
        return out

    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected an array ([...]), got {_show(value)}")
        container = origin or tp
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected an array of exactly {len(args)} items, got {len(value)}")
            return tuple(_convert(item, item_tp, f"{path}[{i}]") for i, (item, item_tp) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_convert(item, item_tp, f"{path}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if container is tuple else items

    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {_show(value)}")
    raise TypeError(f"{path}: configio cannot map the field type {tp!r}; use a supported type (see llm_gym.infra.configio)")


# --------------------------------------------------------------------------- to_dict


def to_dict(obj: Any, *, omit: Callable[[Any, str], bool] | None = None) -> Any:
    """The plain form of `obj` for ``json.dumps`` or a TOML file; the inverse of `from_dict`.

    Dataclasses become dicts of their init fields (so ``from_dict(type(x), to_dict(x)) == x``),
    mappings become dicts, lists and tuples become lists, recursively; None stays None
    (JSON null; `from_dict` accepts it back for Optional fields). Other values are returned
    as they are. `omit(instance, field_name)`, when given, leaves out the fields of any dataclass at any depth
    for which it is true (a fingerprint's view of a config; the result is then no longer `from_dict`'s inverse).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name), omit=omit) for f in dataclasses.fields(obj)
                if f.init and not (omit is not None and omit(obj, f.name))}
    if isinstance(obj, Mapping):
        return {key: to_dict(value, omit=omit) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(item, omit=omit) for item in obj]
    return obj


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split a ``--set`` override ``"a.b.c=value"`` into its key path and value.

    The value is read as a TOML value, so ``1e-3``, ``true``, ``[1, 2]`` and ``"text"`` have
    their TOML types; anything that is not valid TOML is taken as a bare string, so
    ``oracle.kind=synthetic`` needs no quotes.

    >>> parse_override("ppo.ppo_ptx.config.kl_coef=0.1")
    (['ppo', 'ppo_ptx', 'config', 'kl_coef'], 0.1)
    >>> parse_override("oracle.kind=synthetic")
    (['oracle', 'kind'], 'synthetic')

    Raises:
        ConfigError: No ``=``, an empty key or an empty path segment (``a..b``).
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r} has no '='; write KEY.PATH=VALUE, e.g. {_OVERRIDE_EXAMPLE}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key; write KEY.PATH=VALUE, e.g. {_OVERRIDE_EXAMPLE}")
    parts = [part.strip() for part in key.split(".")]
    if any(not part for part in parts):
        raise ConfigError(f"override {text!r} has an empty key segment in {key!r}; write KEY.PATH=VALUE, e.g. {_OVERRIDE_EXAMPLE}")
    return parts, _parse_value(raw.strip())


def _parse_value(raw: str) -> Any:
    try:
        parsed = tomllib.loads("v = " + raw)
    except tomllib.TOMLDecodeError:
        return raw
    if set(parsed) != {"v"}:  # the text held more than one value (e.g. a newline and another key)
        return raw
    return parsed["v"]


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A deep copy of `data` with each ``KEY.PATH=VALUE`` override set, in order.

    Missing intermediate tables are created; whether the keys exist in the config is left
    to `from_dict`, which reports an unknown key with its full path. A value replaces what
    was there, so ``--set ppo.sampling={temperature=0.5}`` replaces the whole table.

    Raises:
        ConfigError: A malformed override (see `parse_override`), or a path through a key
            whose value is not a table (``seed.x=1`` where ``seed = 3``).
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of strings, not one string; wrap it in a list")
    result = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        table: dict[str, Any] = result
        for depth, part in enumerate(parts[:-1]):
            child = table.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"{where}: is {_show(child)}, not a table, so override {text!r} cannot set {'.'.join(parts)}; "
                    f"set {where} itself (--set {where}=...) or check the key path"
                )
            table = child
        table[parts[-1]] = value
    return result


# --------------------------------------------------------------------------- files


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The table a TOML (or ``.json``) config file holds, before it is mapped onto a config class.

    Raises:
        ConfigError: The file is missing or unreadable, or is not valid TOML/JSON (the message
            names the file and, for syntax errors, the line and column).
    """
    file = Path(path)
    if not file.is_file():
        looked = file.resolve()
        what = "is a directory, not a file" if file.is_dir() else "not found"
        raise ConfigError(f"config file {what}: {os.fspath(path)} (looked for {looked})")
    try:
        raw = file.read_bytes()
        text = raw.decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{file}: cannot read the config file: {err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{file}: the config file is not UTF-8 text: {err}") from err
    if file.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{file}: JSON syntax error: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: the top level of a JSON config must be an object {{...}}, got {_show(data)}")
        return data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{file}: TOML syntax error: {err}") from err


def load_config(cls: type[T], path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> T:
    """Read a TOML (or ``.json``) file, apply ``--set`` overrides and build `cls` from it.

    Paths in the file are taken as they are written (an application that wants them relative
    to the file resolves them between `read_config_file` and `from_dict`, as
    `llm_gym.app.config.load_experiment` does).

    Raises:
        ConfigError: The file is missing or unreadable, is not valid TOML/JSON (the message
            names the file and, for syntax errors, the line and column), or its contents do
            not map onto `cls` (see `from_dict`; the message names the file and key path).
    """
    file = Path(path)
    data = apply_overrides(read_config_file(file), overrides)
    try:
        return from_dict(cls, data)
    except ConfigError as err:
        raise ConfigError(f"{file}: {err}") from err


# --------------------------------------------------------------------------- field_docs


def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation, for ``--help``-style listings and doc checks.

    A field's doc is the string literal right after it in the class body (searched through
    the dataclass bases too); failing that, its entry in a Google-style ``Attributes:``
    section of the class docstring; failing that, ``""``. Texts are cleaned with
    ``inspect.cleandoc`` (common indentation removed, line breaks kept).
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"field_docs needs a dataclass type, got {cls!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    docs: dict[str, str] = {}
    for klass in cls.__mro__:  # the subclass first, so its docs win
        if klass is object:
            continue
        for name, doc in _literal_docs(klass).items():
            docs.setdefault(name, doc)
        for name, doc in _attributes_section(klass.__doc__).items():
            docs.setdefault(name, doc)
    return {name: docs.get(name, "") for name in names}


def _literal_docs(klass: type) -> dict[str, str]:
    """The string literals that directly follow annotated assignments in `klass`'s body."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):  # defined in a REPL or by exec: no source to read
        return {}
    module = ast.parse(source)
    node = next((n for n in module.body if isinstance(n, ast.ClassDef)), None)
    if node is None:
        return {}
    docs: dict[str, str] = {}
    for stmt, following in zip(node.body, node.body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(following.value.value)
    return docs


_ENTRY = re.compile(r"^(\w+)\s*(?:\([^)]*\))?\s*:(.*)$")


def _attributes_section(docstring: str | None) -> dict[str, str]:
    """Entries of the Google-style ``Attributes:`` section of `docstring` (name -> text)."""
    if not docstring:
        return {}
    lines = inspect.cleandoc(docstring).splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return {}
    header_indent = _indent(lines[start])
    entries: dict[str, list[str]] = {}
    entry_indent: int | None = None
    current: list[str] | None = None
    for line in lines[start + 1 :]:
        if not line.strip():
            if current is not None:
                current.append("")
            continue
        indent = _indent(line)
        if indent <= header_indent:
            break  # the next section (or prose) starts
        if entry_indent is None:
            entry_indent = indent
        if indent == entry_indent:
            match = _ENTRY.match(line.strip())
            if match is None:
                current = None
                continue
            current = entries.setdefault(match.group(1), [])
            current.append(match.group(2).strip())
        elif current is not None:
            current.append(line)
    # cleandoc keeps the first line and removes the continuation lines' common indentation
    return {name: inspect.cleandoc("\n".join(parts)) for name, parts in entries.items()}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())

