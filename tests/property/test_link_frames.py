"""The call link's framing (``exchange.nodelink.Frames``): however a stream of frames is cut
into reads, the same frames come out in order, and a frame over the limit is refused (the
connection is closed) before its bytes are awaited."""

from __future__ import annotations

from hypothesis import given, strategies as st

from exchange.nodelink import LENGTH, Frames, frame

payloads = st.lists(st.binary(max_size=300), max_size=20)


@given(payloads, st.lists(st.integers(min_value=1, max_value=97), min_size=1, max_size=50))
def test_any_cut_of_the_stream_gives_the_same_frames_in_order(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(p) for p in frames)
    parser = Frames(300)
    out: list[bytes] = []
    at, i = 0, 0
    while at < len(stream):
        n = cuts[i % len(cuts)]
        got = parser.feed(stream[at:at + n])
        assert got is not None
        out.extend(got)
        at, i = at + n, i + 1
    assert out == frames
    assert parser.buf == bytearray()  # nothing left over


@given(st.integers(min_value=301, max_value=2**32 - 1), st.binary(max_size=10))
def test_a_frame_over_the_limit_is_refused_from_its_length_alone(length: int, tail: bytes) -> None:
    parser = Frames(300)
    assert parser.feed(frame(b"ok")) == [b"ok"]
    assert parser.feed(LENGTH.pack(length) + tail) is None
