"""Wire-level decoding shared by the request paths: JSON that refuses duplicate keys, and the
binary tensor extension's BYTES elements. No knowledge of signatures or limits beyond numbers.

`check_duplicate_keys` is the fast exact check described in `serving.validation`; the BYTES
decoders turn `[4-byte little-endian length][UTF-8]` elements into arrays.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson


class RequestError(Exception):
    """A client error: `status` (400, 413, 415, 422) and a one-line message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def loads(body: bytes) -> Any:
    """Parse JSON with orjson.

    Raises:
        RequestError: 422 when the body is not JSON.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(422, f"invalid request body: not JSON ({exc})") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RequestError(400, f"body: duplicate key {key[:64]!r}; each key may appear once per object")
            seen.add(key)
    return out


def loads_exact(body: bytes | memoryview) -> Any:
    """Parse JSON with the standard library, refusing duplicate keys (small bodies: headers, fallbacks).

    Raises:
        RequestError: 400 naming a duplicate key; 422 when the body is not JSON.
    """
    try:
        return json.loads(bytes(body), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise RequestError(422, f"invalid request body: not JSON ({exc})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def count_keys(obj: Any) -> tuple[int, int]:
    """(keys in every object, ':' characters inside every string) of a parsed JSON value.

    Walked with a stack, not recursion: orjson reads values nested up to 1024 levels, deeper than
    Python's default recursion limit (a RecursionError here was a 500).
    """
    keys = colons = 0
    stack = [obj]
    while stack:
        value = stack.pop()
        t = type(value)
        if t is str:
            colons += value.count(":")
        elif t is dict:
            keys += len(value)
            for k, v in value.items():
                colons += k.count(":")
                if type(v) in (dict, list, str):
                    stack.append(v)
        elif t is list:
            stack.extend(v for v in value if type(v) in (dict, list, str))
    return keys, colons


_SIMD_COUNT_FROM = 4096  # bytes; below it `bytes.count` is as fast as numpy's set-up


def count_byte(body: bytes | memoryview, byte: bytes) -> int:
    """How many times the single byte `byte` occurs in `body` (exact).

    `bytes.count` compares byte by byte (about 44 us for a 160 kB body here); numpy's vectorised
    comparison counts the same bytes in about 10 us, so large bodies take that path.
    """
    if len(body) < _SIMD_COUNT_FROM:
        return bytes(body).count(byte)
    return int(np.count_nonzero(np.frombuffer(body, dtype=np.uint8) == byte[0]))


def check_duplicate_keys(body: bytes, keys: int, string_colons: int | Callable[[], int]) -> None:
    """Refuse a JSON body with a duplicate key in any object, naming it.

    Fast and exact: without a backslash in the body, every ':' is either a key separator or
    inside a string, so `body.count(b":") == keys + string_colons` holds exactly when the parser
    kept every key it read. Otherwise the standard library re-parses the body with a hook that
    names the first duplicate (and finds none when the counts differed for another reason).

    Args:
        body: the raw JSON.
        keys: the keys the parser kept, summed over every object.
        string_colons: ':' characters inside every string (keys and values), or a function
            computing them, called only when the body has more ':' than `keys` (strings with a
            ':' are rare, so most requests never count them).

    Raises:
        RequestError: 400 naming the duplicate key.
    """
    if b"\\" not in body:
        colons = count_byte(body, b":")
        if colons == keys:  # then no string holds a ':' and no key was dropped
            return
        if colons == keys + (string_colons if isinstance(string_colons, int) else string_colons()):
            return
    loads_exact(body)


def fixed_width_ascii(buf: memoryview, n: int, max_string_length: int) -> np.ndarray | None:
    """BYTES elements that are all ASCII, without NUL, and of one length (e.g. airport or
    currency codes), decoded into a fixed-width unicode `[n, 1]` array with a few whole-array
    numpy steps (ONNX Runtime takes it as a string tensor, and `np.concatenate` with object
    arrays gives object).

    Returns None for anything else (mixed lengths, non-ASCII, NUL, a bad size), which
    `bytes_elements` then decodes one element at a time with the same rules and messages.
    """
    if n == 0 or len(buf) < 4:
        return None
    width = int.from_bytes(buf[:4], "little")
    if width == 0 or width > max_string_length or len(buf) != n * (4 + width):
        return None
    # Each length prefix must be `width` exactly, each character in 1..127 (no NUL, which the S
    # dtype would drop; ASCII).
    flat = np.frombuffer(buf, dtype=np.uint8)
    records = flat.view(_element_dtype(width))
    if len(flat) <= _LAYOUT_MAX_BYTES:
        # One pass checks every byte against its place in the layout. Unsigned bytes wrap, so
        # `byte - low > span` is `not low <= byte <= low + span`.
        low, span = _layout(width, n)
        if (np.subtract(flat, low[: len(flat)]) > span[: len(flat)]).any():
            return None
        chars = np.ascontiguousarray(records["text"]).view(np.uint8)
    else:  # the same rule in two steps, without building a layout that large
        if (records["size"] != width).any():
            return None
        chars = np.ascontiguousarray(records["text"]).view(np.uint8)
        if chars.min() == 0 or chars.max() >= 0x80:
            return None
    # ASCII code points are the bytes themselves: widen each byte to a UCS-4 code unit (numpy's
    # `U` layout) instead of `astype(U)`, which decodes element by element (57 us vs 1 us a column).
    return chars.astype(np.uint32).view(f"U{width}").reshape(n, 1)


def fixed_width_columns(buf: memoryview, n: int, sizes: list[int], max_string_length: int) -> list[np.ndarray] | None:
    """Adjacent BYTES tensors of `n` elements each (`sizes` bytes each), every tensor of one width,
    decoded together: `fixed_width_ascii` of each, in fewer numpy steps.

    One pass checks every byte of all of them against its place in their layout (each length prefix
    its tensor's width, each character 1..127), one gather (`take`) collects every character, one
    widening makes them UCS-4; each tensor is then a `[n, 1]` view. The layout (check bytes and
    gather indices) depends only on the widths and `n`: it is built the second time that pair is
    seen and kept (a few of them, up to `_COLUMNS_MAX_CHARS` characters), so a client whose batch
    size changes at every request pays no building.

    Returns:
        One `[n, 1]` unicode array per tensor, or None (another layout, a mixed width, non-ASCII,
        NUL, a bad size; or no layout built yet): then decode each with `fixed_width_ascii` /
        `bytes_elements`, which apply the same rules one tensor at a time.
    """
    widths = []
    offset = 0
    for size in sizes:
        if size < 4 or offset + 4 > len(buf):
            return None
        width = int.from_bytes(buf[offset : offset + 4], "little")
        if width == 0 or width > max_string_length or size != n * (4 + width):
            return None
        widths.append(width)
        offset += size
    if offset != len(buf) or n * sum(widths) > _COLUMNS_MAX_CHARS:
        return None
    key = (tuple(widths), n)
    if key not in _COLUMNS_SEEN:
        if len(_COLUMNS_SEEN) >= 256:
            _COLUMNS_SEEN.clear()
        _COLUMNS_SEEN[key] = None
        return None
    low, span, index, bounds = _columns_layout(*key)
    flat = np.frombuffer(buf, dtype=np.uint8)
    if (np.subtract(flat, low) > span).any():
        return None
    chars = flat.take(index).astype(np.uint32)  # every character, tensor after tensor, as UCS-4
    return [chars[a:b].view(f"U{w}").reshape(n, 1) for (a, b), w in zip(bounds, widths, strict=True)]


_COLUMNS_MAX_CHARS = 1 << 16  # characters per layout: gather indices of 512 KiB at most
_COLUMNS_SEEN: dict[tuple[tuple[int, ...], int], None] = {}


@functools.lru_cache(maxsize=8)
def _columns_layout(widths: tuple[int, ...], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """(low, span) per byte, gather index per character, (start, end) of each tensor's characters."""
    low, span, index, bounds = [], [], [], []
    base = chars = 0
    for width in widths:
        one_low, one_span = _layout_rows(width, 1)
        low.append(np.tile(one_low, n))
        span.append(np.tile(one_span, n))
        index.append(base + (np.arange(n)[:, None] * (4 + width) + 4 + np.arange(width)[None, :]).reshape(-1))
        bounds.append((chars, chars + n * width))
        base += n * (4 + width)
        chars += n * width
    arrays = np.concatenate(low), np.concatenate(span), np.concatenate(index)
    for a in arrays:
        a.flags.writeable = False
    return (*arrays, bounds)


_LAYOUT_MAX_BYTES = 1 << 18  # bytes of one tensor checked against a layout (kept: at most 2 x 512 KiB each)


@functools.lru_cache(maxsize=16)
def _layout_rows(width: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    element = 4 + width
    low = np.tile(np.frombuffer(width.to_bytes(4, "little") + b"\x01" * width, dtype=np.uint8), rows)
    span = np.tile(np.array([0] * 4 + [126] * width, dtype=np.uint8), rows)
    low.flags.writeable = span.flags.writeable = False
    assert len(low) == rows * element
    return low, span


def _layout(width: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(low, span) per byte of `n` elements of `width` characters: the prefix bytes exactly, then 1..127.

    Built once per width and power-of-two row count (callers slice them to their length).
    """
    return _layout_rows(width, 1 << max(n - 1, 0).bit_length())


@functools.lru_cache(maxsize=256)
def _element_dtype(width: int) -> np.dtype:
    """One BYTES element of `width` bytes: its 4-byte length, then the bytes."""
    return np.dtype([("size", "<u4"), ("text", f"V{width}")])


def bytes_elements(field: str, buf: memoryview, n: int, max_string_length: int) -> np.ndarray:
    """BYTES elements (4-byte little-endian length, then UTF-8) one at a time, naming the first bad one."""
    out = np.empty(n, dtype=object)
    raw = bytes(buf)
    pos = 0
    for i in range(n):
        if pos + 4 > len(raw):
            raise RequestError(400, f"{field}: binary data ends before element {i} of {n}")
        size = int.from_bytes(raw[pos : pos + 4], "little")
        pos += 4
        if pos + size > len(raw):
            raise RequestError(400, f"{field}: element {i} runs past the end of its binary data")
        try:
            text = raw[pos : pos + size].decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(400, f"{field}: row {i} is not UTF-8") from None
        if len(text) > max_string_length:
            raise RequestError(
                400, f"{field}: row {i} is {len(text)} characters long; the limit is {max_string_length}"
            )
        out[i] = text
        pos += size
    if pos != len(raw):
        raise RequestError(400, f"{field}: binary data holds {len(raw) - pos} bytes past its {n} elements")
    return out


def json_fixed_width_ascii(raw: bytes | memoryview, n: int, max_string_length: int) -> np.ndarray | None:
    """A JSON array of `n` strings of one length, printable ASCII without escapes (codes, e.g. of
    airports or airlines), as written by JSON encoders (`,` or `, ` between items, no other space),
    straight from its bytes into a fixed-width unicode `[n, 1]` array: no `str` object per value.

    The accepting path of parsing the array and `column_array`'s BYTES rules: the same characters
    (a string without a backslash is its bytes, and ASCII bytes are their code points), of at most
    `max_string_length`. ONNX Runtime takes the array as a string tensor (and reads it faster than
    an object array of `str`: about 30 us less per 1,000-row request at 3 columns here).

    Returns None for anything else (another layout, lengths, a character outside 0x20..0x7F, a quote
    or backslash inside a string, an empty string, more than `_LAYOUT_MAX_BYTES`), which a JSON
    decoder then reads value by value. The caller checks that `raw` is valid JSON.
    """
    size = len(raw)
    if n < 1 or size > _LAYOUT_MAX_BYTES:
        return None
    if n == 1 or (size - 1) % n == 0:
        sep, width = 1, (size - 1) // n - 3  # ["AA","BB"]; one item: no separator either way
    elif size % n == 0:
        sep, width = 2, size // n - 4  # ["AA", "BB"]
    else:
        return None
    if not 1 <= width <= max_string_length:
        return None
    data = bytes(raw)
    if b"\\" in data or data.count(b'"') != 2 * n:  # an escape; a quote inside a string
        return None
    if data[-1] != 0x5D:  # `]`; every byte before it is checked against the layout
        return None
    flat = np.frombuffer(data, dtype=np.uint8, count=size - 1)
    low, span = _json_strings_layout(width, 1 << max(n - 1, 0).bit_length(), sep)
    # Unsigned bytes wrap, so `byte - low > span` is `not low <= byte <= low + span`: the bracket,
    # quotes and separators exactly, characters 0x20..0x7F (no quote: counted above).
    if (np.subtract(flat, low[: size - 1]) > span[: size - 1]).any():
        return None
    # The characters in place: row i starts after `["` and i items with their separators.
    chars = np.ndarray((n, width), dtype=np.uint8, buffer=data, offset=2, strides=(width + 2 + sep, 1))
    return chars.astype(np.uint32).view(f"U{width}")  # ASCII bytes widened to UCS-4 code units: [n, 1]


@functools.lru_cache(maxsize=16)
def _json_strings_layout(width: int, rows: int, sep: int) -> tuple[np.ndarray, np.ndarray]:
    """(low, span) per byte of `[` then `rows` strings of `width` characters, each with `sep` bytes after it.

    Built once per width, separator and power-of-two row count by tiling one item (a layout per
    exact row count, built from Python lists, cost 10-30x the decoding it saves whenever the row
    count changed); callers check a prefix: `[`, `n` items, the separators between them.
    """
    item_low = np.array([0x22] + [0x20] * width + [0x22, 0x2C, 0x20][: 1 + sep], dtype=np.uint8)
    item_span = np.array([0] + [0x5F] * width + [0] * (1 + sep), dtype=np.uint8)
    low = np.concatenate((np.array([0x5B], dtype=np.uint8), np.tile(item_low, rows)))
    span = np.concatenate((np.zeros(1, dtype=np.uint8), np.tile(item_span, rows)))
    low.flags.writeable = span.flags.writeable = False
    return low, span
