"""HTTP/2 on the wire, without I/O: frame constants, the frame header, header-block coding.

Decoding keeps the peer's dynamic table and caches what repeats (`HeaderDecoder`), Huffman strings
included (`huffman_decode`, from RFC 7541's code in `hpack_tables`: the `hpack` library's decoding
table alone is half a MiB of every sidecar's memory). Encoding is done here because a relay can do it
for almost nothing: the encoder never adds to the dynamic table (RFC 7541 §6.2.2, "literal without
indexing"), so one (name, value) pair always encodes to the same bytes and the bytes are cached.
Peers decode that like any other block; the price is a few bytes a header that an indexing encoder
would save, on loopback inside a pod.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterable

from meshgate.sidecar.hpack_tables import HUFFMAN_LENGTHS, STATIC_TABLE

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)
CONTINUATION = 9

END_STREAM = 0x1  # DATA, HEADERS
ACK = 0x1  # SETTINGS, PING
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# error codes (RFC 9113 §7)
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x9, 0xB

# settings identifiers
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6

DEFAULT_WINDOW = 65_535
DEFAULT_FRAME = 16_384
MAX_WINDOW = 2**31 - 1

_HEAD = struct.Struct(">BHBBL")  # length as 1 + 2 bytes, type, flags, stream id
_U32 = struct.Struct(">L")
_SETTING = struct.Struct(">HL")
_GOAWAY = struct.Struct(">LL")


class H2Error(Exception):
    """A connection error: the connection ends with GOAWAY carrying `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEAD.pack(n >> 16, n & 0xFFFF, kind, flags, sid) + payload


def parse_head(buf: bytes | bytearray | memoryview, at: int) -> tuple[int, int, int, int]:
    """(length, type, flags, stream id) of the frame header at `at` (9 bytes must be there)."""
    hi, lo, kind, flags, sid = _HEAD.unpack_from(buf, at)
    return (hi << 16) | lo, kind, flags, sid & 0x7FFFFFFF


def settings_frame(values: Iterable[tuple[int, int]]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values))


def parse_settings(payload: bytes) -> list[tuple[int, int]]:
    if len(payload) % 6:
        raise H2Error(FRAME_SIZE_ERROR, "SETTINGS payload is not a multiple of 6")
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def window_update(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, _U32.pack(increment))


def rst_stream(sid: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, sid, _U32.pack(code))


def goaway(last_sid: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(last_sid, code) + debug)


def u32(payload: bytes) -> int:
    if len(payload) < 4:
        raise H2Error(FRAME_SIZE_ERROR, "frame too short")
    return int(_U32.unpack_from(payload)[0]) & 0x7FFFFFFF


def parse_goaway(payload: bytes) -> tuple[int, int]:
    if len(payload) < 8:
        raise H2Error(FRAME_SIZE_ERROR, "GOAWAY too short")
    last, code = _GOAWAY.unpack_from(payload)
    return int(last) & 0x7FFFFFFF, int(code)


def unpad(flags: int, payload: bytes) -> bytes:
    """The payload of a DATA or HEADERS frame without its padding (and, for HEADERS, priority)."""
    if flags & PADDED:
        if not payload:
            raise H2Error(PROTOCOL_ERROR, "padded frame without a pad length")
        pad = payload[0]
        if pad >= len(payload):
            raise H2Error(PROTOCOL_ERROR, "padding longer than the frame")
        payload = payload[1 : len(payload) - pad]
    return payload


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """RFC 7541 §5.1: `value` in an N-bit prefix whose other bits are `first`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(raw: bytes) -> bytes:
    return _integer(len(raw), 7, 0) + raw  # no Huffman: cheaper to make, and the block is cached


_FULL: dict[tuple[bytes, bytes], int] = {}
_NAME: dict[bytes, int] = {}
for _i, (_n, _v) in enumerate(STATIC_TABLE, start=1):
    _FULL.setdefault((_n, _v), _i)
    _NAME.setdefault(_n, _i)


class HeaderEncoder:
    """Encodes header lists with the static table only; each distinct pair's bytes are cached."""

    __slots__ = ("_cache",)

    LIMIT = 4096  # pairs remembered; values that change per call (timeouts, ids) come and go

    def __init__(self) -> None:
        self._cache: dict[tuple[bytes, bytes], bytes] = {}

    def encode(self, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
        cache = self._cache
        parts = []
        for pair in headers:
            enc = cache.get(pair)
            if enc is None:
                enc = self._pair(pair)
                if len(cache) >= self.LIMIT:
                    cache.clear()
                cache[pair] = enc
            parts.append(enc)
        return b"".join(parts)

    @staticmethod
    def _pair(pair: tuple[bytes, bytes]) -> bytes:
        index = _FULL.get(pair)
        if index is not None:
            return _integer(index, 7, 0x80)  # indexed field
        name, value = pair
        index = _NAME.get(name, 0)
        if index:
            return _integer(index, 4, 0x00) + _string(value)  # literal, indexed name, not indexed
        return b"\x00" + _string(name) + _string(value)


ENCODER = HeaderEncoder()  # stateless, so one for every connection


def literal(name: bytes, value: bytes) -> bytes:
    """One field not worth caching (a value that never repeats, such as a request id)."""
    return b"\x00" + _string(name) + _string(value)


def _int(data: bytes, i: int, bits: int) -> tuple[int, int]:
    """RFC 7541 §5.1: the integer at `data[i]` with an N-bit prefix, and the index after it."""
    mask = (1 << bits) - 1
    value = data[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    while True:
        b = data[i]
        i += 1
        value += (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7
        if shift > 28:
            raise H2Error(COMPRESSION_ERROR, "HPACK integer too large")


_Fields = tuple[tuple[bytes, bytes], ...]
_Effects = tuple[tuple[bytes | None, bytes], ...]  # (name, value) added, or (None, size) resized


class HeaderDecoder:
    """HPACK decoding (RFC 7541) of a peer's header blocks, with two caches.

    Peers send the same blocks again and again (every call of a method, every answer of a server),
    so a decoded block is remembered with the changes it made to the dynamic table: a block that
    reads no dynamic entry decodes the same way whatever the table holds (its changes are made
    again on a hit), and one that does decodes the same way on the same table (the key then holds
    the table's change count, which names one state of it). A Huffman-coded string (what changes per block: dates, ids) is decoded once and
    remembered. Measured in docs/benchmarks.md: the library's decoder alone was most of
    the relay's time.
    """

    __slots__ = ("_blocks", "_huffman", "changes", "entries", "limit", "max_list", "maxsize", "size")

    LIMIT = 1024  # blocks and strings remembered

    def __init__(self, max_header_list_size: int, table_size: int = 4096) -> None:
        self.entries: deque[tuple[bytes, bytes]] = deque()  # the dynamic table, newest first
        self.size = 0
        self.maxsize = self.limit = table_size  # the limit is SETTINGS_HEADER_TABLE_SIZE (ours)
        self.max_list = max_header_list_size
        self.changes = 0
        self._blocks: dict[tuple[int, bytes], tuple[_Fields, _Effects]] = {}
        self._huffman: dict[bytes, bytes] = {}

    def decode(self, block: bytes) -> tuple[tuple[bytes, bytes], ...]:
        blocks = self._blocks
        hit = blocks.get((-1, block)) or blocks.get((self.changes, block))
        if hit is not None:
            headers, effects = hit
            for name, value in effects:  # the block's own changes to the table, made again
                self._resize(int(value)) if name is None else self._add(name, value)
            return headers
        before = self.changes
        try:
            headers, dynamic, effects = self._decode(block)
        except IndexError:
            raise H2Error(COMPRESSION_ERROR, "bad header block") from None
        if sum(len(k) + len(v) + 32 for k, v in headers) > self.max_list:
            raise H2Error(ENHANCE_YOUR_CALM, "header list too large")
        if len(blocks) >= self.LIMIT:
            blocks.clear()
        blocks[(before if dynamic else -1, block)] = (headers, effects)
        return headers

    def _decode(
        self, data: bytes
    ) -> tuple[tuple[tuple[bytes, bytes], ...], bool, tuple[tuple[bytes | None, bytes], ...]]:
        """(headers, whether they read the dynamic table, the changes they made to it)."""
        out = []
        effects: list[tuple[bytes | None, bytes]] = []
        dynamic = False
        i, n = 0, len(data)
        while i < n:
            b = data[i]
            if b & 0x80:  # indexed field
                index, i = _int(data, i, 7)
                dynamic = dynamic or index > _STATIC_LEN
                out.append(self._get(index))
                continue
            if b & 0x40:  # literal with incremental indexing
                index, i = _int(data, i, 6)
            elif b & 0x20:  # dynamic table size update
                size, i = _int(data, i, 5)
                self._resize(size)
                effects.append((None, b"%d" % size))
                continue
            else:  # literal without indexing, or never indexed
                index, i = _int(data, i, 4)
            if index:
                dynamic = dynamic or index > _STATIC_LEN
                name = self._get(index)[0]
            else:
                name, i = self._string(data, i)
            value, i = self._string(data, i)
            out.append((name, value))
            if b & 0x40:
                self._add(name, value)
                effects.append((name, value))
        return tuple(out), dynamic, tuple(effects)

    def _resize(self, size: int) -> None:
        if size > self.limit:
            raise H2Error(COMPRESSION_ERROR, "table size above SETTINGS_HEADER_TABLE_SIZE")
        self.maxsize = size
        self._shrink()
        self.changes += 1

    def _string(self, data: bytes, i: int) -> tuple[bytes, int]:
        huffman = data[i] & 0x80
        length, i = _int(data, i, 7)
        raw = data[i : i + length]
        if len(raw) < length:
            raise H2Error(COMPRESSION_ERROR, "HPACK string past the block")
        if not huffman:
            return raw, i + length
        text = self._huffman.get(raw)
        if text is None:
            text = huffman_decode(raw)
            if len(self._huffman) >= self.LIMIT:
                self._huffman.clear()
            self._huffman[raw] = text
        return text, i + length

    def _get(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_LEN:
            return _STATIC[index - 1]
        if index > _STATIC_LEN:
            return self.entries[index - _STATIC_LEN - 1]
        raise H2Error(COMPRESSION_ERROR, "HPACK index 0")

    def _add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        size = len(name) + len(value) + 32
        if size > self.maxsize:
            self.entries.clear()
            self.size = 0
            return
        self.entries.appendleft((name, value))
        self.size += size
        self._shrink()

    def _shrink(self) -> None:
        while self.size > self.maxsize:
            name, value = self.entries.pop()
            self.size -= len(name) + len(value) + 32


_STATIC = STATIC_TABLE


def _huffman_codes() -> tuple[tuple[int, dict[int, int]], ...]:
    """(length, {code: symbol}) by increasing length: the canonical code of RFC 7541 Appendix B, which
    gives codes in order of (length, symbol)."""
    by_length: dict[int, dict[int, int]] = {}
    code, prev = -1, 0
    for sym in sorted(range(257), key=lambda s: (HUFFMAN_LENGTHS[s], s)):
        length = HUFFMAN_LENGTHS[sym]
        code = (code + 1) << (length - prev)
        prev = length
        by_length.setdefault(length, {})[code] = sym
    return tuple(sorted(by_length.items()))


_HUFFMAN = _huffman_codes()
_EOS = 256
# The codes of up to 8 bits (the printable characters headers are mostly made of), by the 8 bits a
# window starts with: one lookup a character.
_SHORT: dict[int, tuple[int, int]] = {
    (code << (8 - length)) | pad: (sym, length)
    for length, codes in _HUFFMAN
    if length <= 8
    for code, sym in codes.items()
    for pad in range(1 << (8 - length))
}


def huffman_decode(data: bytes) -> bytes:
    """RFC 7541 §5.2: the string a Huffman-coded one stands for; H2Error for EOS inside it, or padding
    longer than 7 bits or not all ones."""
    out = bytearray()
    window = bits = i = 0
    n = len(data)
    while True:
        while bits < 30 and i < n:  # the longest code is 30 bits
            window, bits, i = (window << 8) | data[i], bits + 8, i + 1
        if bits >= 8:
            short = _SHORT.get(window >> (bits - 8))
            if short is not None:
                out.append(short[0])
                bits -= short[1]
                window &= (1 << bits) - 1
                continue
        sym: int | None = None
        for length, codes in _HUFFMAN:  # the code is prefix-free: the shortest match is the one
            if length > bits:
                break
            sym = codes.get(window >> (bits - length))
            if sym is not None:
                break
        if sym is None:  # no code in what is left: it must be padding (the start of EOS, all ones)
            if i < n or bits > 7 or window != (1 << bits) - 1:
                raise H2Error(COMPRESSION_ERROR, "bad Huffman padding")
            return bytes(out)
        if sym == _EOS:
            raise H2Error(COMPRESSION_ERROR, "EOS in a Huffman string")
        out.append(sym)
        bits -= length
        window &= (1 << bits) - 1


_STATIC_LEN = len(_STATIC)
