"""Checking a study file's sampler or pruner options against the constructor they are passed to.

Options go to Optuna as keyword arguments, so any option Optuna has works
without hpo mirroring it; this reads the constructor's signature to refuse,
by YAML path and before anything is created, an option it lacks, a value of
the wrong type (``seed: abc``), and an option a YAML file cannot give (a
Python function such as ``constraints_func``, an Optuna object).
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

_NOT_FROM_YAML = {
    "Callable": "takes a Python function, which a study file cannot give",
    "BaseSampler": "takes an Optuna sampler object, which a study file cannot give",
    "FrozenTrial": "takes Optuna trial objects, which a study file cannot give",
}
_NAMES = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict, "list": list, "tuple": tuple,
          "Any": Any, "None": None, "Sequence": Sequence, "Mapping": Mapping}


def _annotation(parameter: inspect.Parameter) -> Any:
    """The parameter's type, or a reason it cannot come from YAML, or None when unknown."""
    annotation = parameter.annotation
    if annotation is inspect.Parameter.empty:
        return None
    for marker, reason in _NOT_FROM_YAML.items():
        if marker in str(annotation):
            return reason
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, {"__builtins__": {}}, dict(_NAMES))  # noqa: S307 - Optuna's own annotation, not user input
    except Exception:  # noqa: BLE001 - a name we do not know: let the constructor judge the value
        return None


_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null",
          dict: "a mapping", Mapping: "a mapping", list: "a list", tuple: "a list", Sequence: "a list"}


def _describe(kind: Any) -> str:
    members = typing.get_args(kind) if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union else (kind,)
    words = [_WORDS.get(typing.get_origin(m) or m, str(m)) for m in members]
    words = list(dict.fromkeys(words))
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _type_problem(kind: Any, value: Any) -> str | None:
    try:
        TypeAdapter(kind).validate_python(value, strict=True)
    except ValidationError:
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return f"must be {_describe(kind)}, got {shown}"
    except Exception:  # noqa: BLE001 - a type pydantic cannot check: the constructor will
        return None
    return None


def problems(section: str, cls: type, options: dict[str, Any], skip: set[str] = frozenset()) -> list[str]:
    """Every option of ``section`` that ``cls`` cannot take from a study file, by YAML path."""
    parameters = {name: p for name, p in inspect.signature(cls).parameters.items() if name not in skip | {"self"}}
    found = []
    for name, parameter in parameters.items():
        required = parameter.default is inspect.Parameter.empty and parameter.kind is not parameter.VAR_KEYWORD
        if required and name not in options:
            found.append(f"{section}.{name}: is required by {cls.__name__}")
    for name, value in options.items():
        if name not in parameters:
            names = ", ".join(sorted(parameters)) or "none"
            found.append(f"{section}.{name}: is not an option of {cls.__name__} (options: {names})")
            continue
        kind = _annotation(parameters[name])
        if isinstance(kind, str):
            found.append(f"{section}.{name}: {kind}")
        elif kind is not None:
            problem = _type_problem(kind, value)
            if problem:
                found.append(f"{section}.{name}: {problem}")
    return found
