"""The relay's HTTP/2 codec without I/O, against the `h2` library as the peer (an independent
implementation): HPACK both ways, header blocks across CONTINUATION, padding, flow control in both
directions, the concurrent-stream limit, and connection errors."""

from __future__ import annotations

import random
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from meshgate.sidecar import h2wire as w
from meshgate.sidecar.h2conn import H2Conn, Headers


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.drained: list[tuple[int, int]] = []

    def on_headers(self, sid: int, headers: Headers, end_stream: bool) -> None:
        self.events.append(("headers", sid, list(headers), end_stream))

    def on_data(self, sid: int, data: bytes, end_stream: bool) -> None:
        self.events.append(("data", sid, data, end_stream))

    def on_reset(self, sid: int, code: int) -> None:
        self.events.append(("reset", sid, code))

    def on_drained(self, sid: int, sent: int) -> None:
        self.drained.append((sid, sent))

    def on_goaway(self, last_sid: int, code: int) -> None:
        self.events.append(("goaway", last_sid, code))


def server_pair(
    settings: dict[int, int] | None = None,
) -> tuple[H2Conn, Recorder, h2.connection.H2Connection]:
    """Our server end and an h2 client end, past the preface and SETTINGS exchange."""
    rec = Recorder()
    ours = H2Conn(rec, client=False, wake=lambda: None)
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    peer.initiate_connection()
    if settings:
        peer.update_settings(settings)
    ours.feed(peer.data_to_send())
    events = peer.receive_data(ours.take())
    assert any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events)
    ours.feed(peer.data_to_send())  # the SETTINGS ACK
    peer.receive_data(ours.take())
    return ours, rec, peer


hpack_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/pkg.Svc/Call"), (b":authority", b"x")]


def test_hpack_decoding_matches_the_library_on_any_block_sequence() -> None:
    """Random header lists through hpack's encoder (Huffman or not, table resizes), blocks sent
    again later (the decode cache), decoded by ours in order: the same headers every time."""
    for seed in range(4):
        rnd = random.Random(seed)
        enc, dec = hpack.Encoder(), w.HeaderDecoder(1 << 20)
        names = [b":path", b"content-type", b"x-a", b"date", b"grpc-status", b"x-" + b"z" * 60]
        for n in range(2000):
            if n % 400 == 0:
                enc.header_table_size = rnd.choice([0, 128, 4096])
            headers = [
                (rnd.choice(names), b"%d" % rnd.randrange(8 if rnd.random() < 0.8 else 10**9))
                for _ in range(rnd.randrange(1, 7))
            ]
            block = enc.encode(headers, huffman=rnd.random() < 0.5)
            assert list(dec.decode(block)) == headers, (seed, n)
            again = enc.encode(headers, huffman=False)  # the same list again: indexed this time
            assert list(dec.decode(again)) == headers, (seed, n)


def test_huffman_decoding_matches_the_library_on_any_bytes() -> None:
    """Every symbol (all 256 byte values), long and short strings: the same as hpack's decoder."""
    rnd = random.Random(7)
    samples = [bytes(range(256)), b"", b"a", b"Mon, 21 Oct 2013 20:13:21 GMT", b"\xff" * 40]
    samples += [rnd.randbytes(rnd.randrange(1, 300)) for _ in range(300)]
    samples += [bytes(rnd.choice(b"abc-/:0189 XYZ~") for _ in range(rnd.randrange(50))) for _ in range(300)]
    for raw in samples:
        coded = hpack_huffman.encode(raw)
        assert w.huffman_decode(coded) == raw == decode_huffman(coded)


@pytest.mark.parametrize(
    "coded",
    [
        bytes([0b11111111, 0b11111111, 0b11111111, 0b11111100]),  # EOS (30 ones) inside the string
        bytes([0b00000111, 0b11111111]),  # "0" then 11 bits of padding (at most 7)
        bytes([0b00000011]),  # "0" then padding that is not all ones
    ],
)
def test_bad_huffman_strings_are_compression_errors(coded: bytes) -> None:
    with pytest.raises(w.H2Error) as err:
        w.huffman_decode(coded)
    assert err.value.code == w.COMPRESSION_ERROR
    block = b"\x00" + bytes([0x01]) + b"x" + bytes([0x80 | len(coded)]) + coded  # a literal, value Huffman
    with pytest.raises(w.H2Error):  # in a header block: a connection error, never a traceback
        w.HeaderDecoder(1 << 20).decode(block)


def test_encoder_output_decodes_with_the_library() -> None:
    dec = hpack.Decoder()
    headers = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"x-long", b"v" * 300)]
    for _ in range(3):  # cached pairs: the same bytes every time, still valid
        assert dec.decode(w.ENCODER.encode(headers), raw=True) == headers
    assert dec.decode(w.literal(b"x-meshgate-request-id", b"abc"), raw=True) == [
        (b"x-meshgate-request-id", b"abc")
    ]


def test_a_request_across_continuation_frames_with_padding() -> None:
    ours, rec, peer = server_pair()
    big = [*REQUEST, *((b"x-%d" % i, b"v" * 200) for i in range(150))]  # ~30 KB: HEADERS + CONTINUATION
    peer.send_headers(1, big)
    peer.send_data(1, b"hello", end_stream=True, pad_length=20)
    ours.feed(peer.data_to_send())
    assert rec.events[0] == ("headers", 1, big, False)
    assert rec.events[1] == ("data", 1, b"hello", True)


def test_response_and_trailers_reach_the_peer() -> None:
    ours, _, peer = server_pair()
    peer.send_headers(1, REQUEST, end_stream=True)
    ours.feed(peer.data_to_send())
    ours.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")], False)
    assert ours.send_data(1, b"\0\0\0\0\x02hi", False) == 7
    ours.send_headers(1, [(b"grpc-status", b"0")], True)
    events = peer.receive_data(ours.take())
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert events[2].headers == [(b"grpc-status", b"0")]
    assert 1 not in ours.streams  # both sides ended: the stream is gone


def test_data_beyond_the_peers_window_waits_in_order_with_the_trailers() -> None:
    """The peer's window is 100 bytes: 250 bytes go out as it grows, the trailers last."""
    ours, rec, peer = server_pair({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
    peer.send_headers(1, REQUEST, end_stream=True)
    ours.feed(peer.data_to_send())
    ours.send_headers(1, [(b":status", b"200")], False)
    assert ours.send_data(1, b"a" * 250, False) == 0  # queued: reported by on_drained instead
    ours.send_headers(1, [(b"grpc-status", b"0")], True)
    got, trailers = b"", None
    for _ in range(5):
        for e in peer.receive_data(ours.take()):
            if isinstance(e, h2.events.DataReceived):
                got += e.data
                peer.acknowledge_received_data(e.flow_controlled_length, 1)
            elif isinstance(e, h2.events.TrailersReceived):
                trailers = e.headers
                assert got == b"a" * 250  # nothing overtook the data
        ours.feed(peer.data_to_send())  # WINDOW_UPDATEs
    assert got == b"a" * 250 and trailers == [(b"grpc-status", b"0")]
    assert sum(n for _, n in rec.drained) == 250


def test_the_window_given_back_only_when_consumed() -> None:
    """Bytes received are not acknowledged until the handler consumes them; a peer that sends past
    the window is a connection error."""
    ours, _, peer = server_pair()
    chunk = b"x" * 16_000
    for sid in (1, 3, 5, 7, 9):  # 1.2 MB in all, 240 KB a stream
        peer.send_headers(sid, REQUEST)
        for _ in range(15):
            peer.send_data(sid, chunk)
    ours.feed(peer.data_to_send())
    assert not [e for e in peer.receive_data(ours.take()) if isinstance(e, h2.events.WindowUpdated)]
    for sid in (1, 3, 5, 7, 9):
        ours.consume(sid, 15 * 16_000)
    updated = [e for e in peer.receive_data(ours.take()) if isinstance(e, h2.events.WindowUpdated)]
    assert [e.stream_id for e in updated] == [0]  # the connection's; no stream reached a quarter
    peer.send_headers(11, REQUEST)
    for _ in range(20):
        peer.send_data(11, chunk)
    ours.feed(peer.data_to_send())
    ours.consume(11, 20 * 16_000)
    updated = [e for e in peer.receive_data(ours.take()) if isinstance(e, h2.events.WindowUpdated)]
    assert [e.stream_id for e in updated] == [11]
    # an overrun: a frame past the stream window (raw, h2 would not send it)
    rogue = H2Conn(Recorder(), client=False, wake=lambda: None)
    rogue.feed(
        w.PREFACE + w.settings_frame(()) + w.frame(w.HEADERS, w.END_HEADERS, 1, w.ENCODER.encode(REQUEST))
    )
    with pytest.raises(w.H2Error) as err:
        for _ in range(70):
            rogue.feed(w.frame(w.DATA, 0, 1, b"y" * 16_384))
    assert err.value.code == w.FLOW_CONTROL_ERROR


def test_streams_over_the_limit_are_refused() -> None:
    ours, rec, peer = server_pair()
    H2Conn.MAX_STREAMS, old = 2, H2Conn.MAX_STREAMS
    try:
        for sid in (1, 3, 5):
            peer.send_headers(sid, REQUEST)
        ours.feed(peer.data_to_send())
    finally:
        H2Conn.MAX_STREAMS = old
    resets = [e for e in peer.receive_data(ours.take()) if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in resets] == [(5, w.REFUSED_STREAM)]
    assert [e[1] for e in rec.events] == [1, 3]


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", w.PROTOCOL_ERROR),  # not the preface
        (w.PREFACE + w.frame(w.HEADERS, 0, 1, b"\x82") + w.frame(w.DATA, 0, 1, b"x"), w.PROTOCOL_ERROR),
        (w.PREFACE + w.frame(w.HEADERS, w.END_HEADERS, 2, b"\x82"), w.PROTOCOL_ERROR),  # even id
        (w.PREFACE + w.frame(w.HEADERS, w.END_HEADERS, 1, b"\xff\xff\xff\xff\x7f"), w.COMPRESSION_ERROR),
        (w.PREFACE + w.frame(w.PING, 0, 0, b"short"), w.PROTOCOL_ERROR),
        (w.PREFACE + w.frame(w.DATA, 0, 1, b"\0" * (w.DEFAULT_FRAME + 1)), w.FRAME_SIZE_ERROR),
    ],
)
def test_connection_errors(wire: bytes, code: int) -> None:
    conn = H2Conn(Recorder(), client=False, wake=lambda: None)
    with pytest.raises(w.H2Error) as err:
        conn.feed(wire)
    assert err.value.code == code


def test_client_end_against_an_h2_server() -> None:
    """Our client end: preface, a request, the answer with trailers; PING answered; GOAWAY told."""
    rec = Recorder()
    ours = H2Conn(rec, client=True, wake=lambda: None)
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    peer.initiate_connection()
    sid = ours.open_stream()
    ours.send_headers(sid, REQUEST, False)
    ours.send_data(sid, b"\0\0\0\0\x01x", True)
    events = peer.receive_data(ours.take())
    assert [type(e).__name__ for e in events][:3] == [
        "RemoteSettingsChanged",
        "WindowUpdated",
        "RequestReceived",
    ]
    peer.send_headers(sid, [(b":status", b"200")])
    peer.send_data(sid, b"\0\0\0\0\x01y")
    peer.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    peer.ping(b"12345678")
    ours.feed(peer.data_to_send())
    acks = [e for e in peer.receive_data(ours.take()) if isinstance(e, h2.events.PingAckReceived)]
    assert acks and ours.can_open
    peer.close_connection(last_stream_id=sid)
    ours.feed(peer.data_to_send())
    assert rec.events == [
        ("headers", sid, [(b":status", b"200")], False),
        ("data", sid, b"\0\0\0\0\x01y", False),
        ("headers", sid, [(b"grpc-status", b"0")], True),
        ("goaway", sid, 0),
    ]
    assert not ours.can_open
