"""Safe YAML reading and writing for study files.

PyYAML follows YAML 1.1, where ``1e-5`` is a string (a float needs a dot:
``1.0e-5``). Learning rates are written the first way by everybody, so the
loader also resolves exponent notation as floats. Only the safe loader is used:
a study file can never construct Python objects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hpo.errors import SpecError


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def load_checked(self) -> Any:
        try:
            node = self.get_single_node()
            if node is None:
                return None
            _check_size(node)
            duplicates = list(dict.fromkeys(_duplicates(node, [])))  # once, though an alias repeats it
            if duplicates:
                raise DuplicateKeys(duplicates)
            return self.construct_document(node)
        finally:
            self.dispose()


# Values in a study file once aliases are expanded: thousands at most; an alias bomb
# (aliases of aliases) expands to millions and would be stored with the study.
MAX_VALUES = 50_000


class TooLarge(yaml.YAMLError):
    pass


def _check_size(root: yaml.Node) -> None:
    """Count values as the document expands (aliases counted each time they are used), stopping early."""
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise TooLarge(f"holds more than {MAX_VALUES:,} values once YAML aliases are expanded; a study file needs far fewer")
        if isinstance(node, yaml.MappingNode):
            stack.extend(value for pair in node.value for value in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


class DuplicateKeys(yaml.YAMLError):
    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def _duplicates(node: yaml.Node, path: list[str]):
    """Every key repeated in a mapping, as 'yaml.path: duplicate key at line N (first at line M)'."""
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                ident = (key.tag, key.value)
                where = ".".join([*path, key.value]).replace(".[", "[")
                if ident in first:
                    yield f"{where}: duplicate key at line {key.start_mark.line + 1} (first at line {first[ident]}); keep one"
                else:
                    first[ident] = key.start_mark.line + 1
            yield from _duplicates(value, [*path, str(getattr(key, "value", "?"))])
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicates(item, [*path[:-1], f"{path[-1]}[{i}]"] if path else [f"[{i}]"])


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, turning every failure into a one-line SpecError."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(str(path), ["file not found"]) from None
    except IsADirectoryError:
        raise SpecError(str(path), ["is a folder, not a study file"]) from None
    except OSError as exc:
        raise SpecError(str(path), [f"cannot read: {exc.strerror}"]) from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError(str(path), ["is UTF-16 text; save it as UTF-8"])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(
            str(path), [f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}: Latin-1 or Windows-1252?); save it as UTF-8"]
        ) from None
    try:
        return _Loader(text).load_checked()  # a SafeLoader: no Python objects
    except DuplicateKeys as exc:
        raise SpecError(str(path), exc.problems) from None
    except TooLarge as exc:
        raise SpecError(str(path), [str(exc)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(str(path), [f"YAML syntax error at {where}{problem}"]) from None


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
