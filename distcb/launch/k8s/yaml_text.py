"""A small YAML writer for Kubernetes manifests (block style, no dependency).

It writes the subset manifests use: mappings with string keys, sequences,
strings, ints, booleans and null. A string is written plain only when every
YAML 1.1 reader (PyYAML, the Go readers behind kubectl) reads it back as that
same string; otherwise it is double-quoted, in ASCII with ``\\u``/``\\U``
escapes. Floats are refused: Kubernetes quantities are
strings ("500m", "1Gi").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["dump", "dump_documents"]

# Letters, digits and a few punctuation marks, starting with a letter, "_", "/" or "--x":
# never a number, a timestamp, an indicator, a comment or a "key: value".
_PLAIN = re.compile(r"(?:[A-Za-z_/]|--[A-Za-z])[A-Za-z0-9_./=@+-]*")
# YAML 1.1 booleans and null, which Go's yaml.v2 (kubectl) still honours.
_RESERVED = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}
_MAX_KEY = 1024  # YAML's limit on an implicit key (Kubernetes keys are at most 317)


def dump(value: Any) -> str:
    """`value` as a YAML block (ends with a newline)."""
    return "\n".join(_block(value, 0)) + "\n"


def dump_documents(
    documents: Iterable[tuple[Sequence[str], Any]], header: Sequence[str] = ()
) -> str:
    """Several documents, each after ``---`` and its own comment lines; `header` comment
    lines open the stream."""
    parts = [_comments(header)]
    for comments, document in documents:
        parts.append("---\n" + _comments(comments) + dump(document))
    return "".join(parts)


def _comments(lines: Sequence[str]) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in lines)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _RESERVED:
            return value
        return _quoted(value)
    raise TypeError(
        f"the manifest writer takes str, int, bool, None, dicts and lists; received "
        f"{type(value).__name__} {value!r} (write Kubernetes quantities as strings)"
    )


def _quoted(text: str) -> str:
    """A YAML double-quoted scalar in ASCII: printable ASCII as is, the rest escaped."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _inline(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{}"  # only called for empty containers
    if isinstance(value, list | tuple):
        return "[]"
    return _scalar(value)


def _is_block(value: Any) -> bool:
    return isinstance(value, Mapping | list | tuple) and len(value) > 0


def _block(value: Any, indent: int) -> list[str]:
    pad = " " * indent
    if isinstance(value, Mapping):
        if not value:
            return [pad + "{}"]
        lines = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"mapping keys must be strings, received {key!r}")
            if len(_scalar(key)) > _MAX_KEY:
                raise ValueError(
                    f"a mapping key is at most {_MAX_KEY} characters as written in "
                    f"YAML, received one of {len(_scalar(key))}: {key[:40]!r}..."
                )
            if _is_block(item):
                lines.append(f"{pad}{_scalar(key)}:")
                lines.extend(_block(item, indent + 2))
            else:
                lines.append(f"{pad}{_scalar(key)}: {_inline(item)}")
        return lines
    if isinstance(value, list | tuple):
        if not value:
            return [pad + "[]"]
        lines = []
        for item in value:
            if _is_block(item):
                inner = _block(item, indent + 2)
                lines.append(f"{pad}- {inner[0][indent + 2 :]}")
                lines.extend(inner[1:])
            else:
                lines.append(f"{pad}- {_inline(item)}")
        return lines
    return [pad + _scalar(value)]
