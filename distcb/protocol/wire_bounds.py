"""What decoding one MessagePack message may allocate: values and nesting, not only bytes.

A byte on the wire may become far more in memory: ``0x80`` is an empty map, 64 bytes
of Python dict, so 7 MB of them decode to more than half a gigabyte. `check` bounds
the values a message holds (every map key and value, list item and container) and
how deep containers nest, before the message is decoded.

It stays cheap: the number of bytes that may start a map or an array (counted at C
speed, `bytes.translate`) bounds the containers a message can hold, and the message's
length bounds its values. Only a message above either bound is walked, and the walk
takes runs of equal-sized values (small integers, nils, floats, the empty containers of
an attack) in one regular-expression match each.
"""

from __future__ import annotations

import re

from distcb.protocol.errors import ProtocolError

__all__ = ["CHEAP_CONTAINERS", "check", "check_depth", "needs_walk"]

CHEAP_CONTAINERS = 65536
"""A message with at most this many bytes that may start a map or an array, and at most
`max_elements` bytes, is not walked: it cannot hold more containers or values."""

_CONTAINER_BYTES = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])

# Runs of values of one size, as (first bytes, pattern, bytes per value): a run's count is
# its length divided by the size. One-byte values: positive and negative fixints, nil,
# booleans, and the empty map, array and string.
_ONE_BYTE = bytes([*range(0x00, 0x80), 0x80, 0x90, 0xA0, 0xC0, 0xC2, 0xC3, *range(0xE0, 0x100)])
_RUN_KINDS = (
    (_ONE_BYTE, rb"[\x00-\x7f\x80\x90\xa0\xc0\xc2\xc3\xe0-\xff]++", 1),
    (b"\xcb", rb"(?:\xcb[\x00-\xff]{8})++", 9),  # float64
    (b"\xcc\xd0", rb"(?:[\xcc\xd0][\x00-\xff])++", 2),  # uint8 / int8
    (b"\xcd\xd1", rb"(?:[\xcd\xd1][\x00-\xff]{2})++", 3),  # uint16 / int16
    (b"\xca\xce\xd2", rb"(?:[\xca\xce\xd2][\x00-\xff]{4})++", 5),  # float32 / (u)int32
)
# Possessive (++): a greedy group repeat would keep a backtracking mark per value (60 MB
# for a run of 500k floats).
# The run a value's first byte starts (None: a container with items, or a sized value).
_RUN_BY_FIRST: list[tuple[re.Pattern[bytes], int] | None] = [None] * 256
for _firsts, _pattern, _size in _RUN_KINDS:
    for _first in _firsts:
        _RUN_BY_FIRST[_first] = (re.compile(_pattern, re.DOTALL), _size)
# Scalars by their first byte: how many more bytes they take (the fixed part).
_FIXED = {
    0xCC: 1, 0xD0: 1, 0xCD: 2, 0xD1: 2, 0xCA: 4, 0xCE: 4, 0xD2: 4, 0xCB: 8, 0xCF: 8, 0xD3: 8,
    0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17,  # fixext: type byte + data
}  # fmt: skip
# Strings, binaries and extensions: the size of their length field (extensions: + type).
_SIZED = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4}
_EXT = {0xC7: 1, 0xC8: 2, 0xC9: 4}


def check(data: bytes, *, max_elements: int, max_depth: int, what: str = "a message") -> None:
    """Raise ProtocolError when `data` holds more than `max_elements` values or nests
    containers deeper than `max_depth` (the names in the message are the Config fields).

    Malformed MessagePack is left to the decoder (which rejects it); this only counts.
    """
    if needs_walk(data, max_elements):
        _walk(data, max_elements, max_depth, what)


def needs_walk(data: bytes, max_elements: int) -> bool:
    """Whether `check` must walk `data` (else it returns at once): more bytes than
    `max_elements`, or more than `CHEAP_CONTAINERS` bytes that may start a container. A
    transport decodes such a message off its event loop: the walk takes up to a second."""
    if len(data) > max_elements:
        return True
    # Few containers and few values: what they cost is small. Depth is then left to the
    # typed decoder (log values nest at most three lists) and to `check_depth` on the
    # untyped fields.
    return len(data) - len(data.translate(None, _CONTAINER_BYTES)) > CHEAP_CONTAINERS


def _walk(data: bytes, max_elements: int, max_depth: int, what: str) -> None:
    end = len(data)
    pos = 0
    elements = 0
    remaining = 1  # values left in the innermost open container (the top: one)
    stack: list[int] = []
    while True:
        if remaining == 0:
            if not stack:
                return
            remaining = stack.pop()
            continue
        if pos >= end:
            return  # truncated: the decoder says so
        first = data[pos]
        kind = _RUN_BY_FIRST[first]
        # At most the container's remaining values are matched (a long run is not scanned
        # again for each container that ends inside it).
        run = None if kind is None else kind[0].match(data, pos, pos + remaining * kind[1])
        if kind is not None and run is not None:
            size = kind[1]
            count = (run.end() - pos) // size
            pos += count * size
            remaining -= count
            elements += count
        else:
            pos += 1
            remaining -= 1
            elements += 1
            items = _container_items(data, pos, first)
            if items is not None:
                pos += _header_extra(first)
                if items:
                    stack.append(remaining)
                    remaining = items
                    if len(stack) > max_depth:
                        raise ProtocolError(
                            f"{what} nests containers more than Config.max_decoded_depth="
                            f"{max_depth} deep"
                        )
            else:
                skip = _scalar_extra(data, pos, first)
                if skip is None:
                    return  # not MessagePack: the decoder says so
                pos += skip
        if elements > max_elements:
            raise ProtocolError(
                f"{what} holds more than Config.max_decoded_elements={max_elements} values "
                "(map keys, values and list items)"
            )


def _container_items(data: bytes, pos: int, first: int) -> int | None:
    """Items (a map's keys and values) of the container starting with `first`; None: no
    container."""
    if 0x80 <= first <= 0x8F:
        return (first & 0x0F) * 2
    if 0x90 <= first <= 0x9F:
        return first & 0x0F
    if first in (0xDC, 0xDE):
        count = int.from_bytes(data[pos : pos + 2], "big")
        return count * 2 if first == 0xDE else count
    if first in (0xDD, 0xDF):
        count = int.from_bytes(data[pos : pos + 4], "big")
        return count * 2 if first == 0xDF else count
    return None


def _header_extra(first: int) -> int:
    return {0xDC: 2, 0xDE: 2, 0xDD: 4, 0xDF: 4}.get(first, 0)


def _scalar_extra(data: bytes, pos: int, first: int) -> int | None:
    """The bytes a scalar takes after its first byte; None: not a MessagePack value."""
    if first <= 0x7F or first >= 0xE0 or first in (0xC0, 0xC2, 0xC3):
        return 0
    if 0xA0 <= first <= 0xBF:
        return first & 0x1F
    if first in _FIXED:
        return _FIXED[first]
    if first in _SIZED:
        width = _SIZED[first]
        return width + int.from_bytes(data[pos : pos + width], "big")
    if first in _EXT:
        width = _EXT[first]
        return width + 1 + int.from_bytes(data[pos : pos + width], "big")
    return None


def check_depth(value: object, *, max_depth: int, what: str) -> None:
    """Raise ProtocolError when the decoded `value` (dicts and lists) nests deeper than
    `max_depth`: for the untyped fields of a message (extras, reports)."""
    level: list[object] = [value]
    depth = 0
    while level:
        containers: list[object] = []
        for item in level:
            if isinstance(item, dict):
                containers.extend(v for v in item.values() if isinstance(v, dict | list))
            elif isinstance(item, list):
                containers.extend(v for v in item if isinstance(v, dict | list))
        if containers:
            depth += 1
            if depth > max_depth:
                raise ProtocolError(
                    f"{what} nests containers more than Config.max_decoded_depth={max_depth} deep"
                )
        level = containers
