"""Frame splitting of the mesh link, whatever way the socket cuts the stream."""

from __future__ import annotations

import pytest

from meshserve.link import frames
from meshserve.link.frames import MAGIC, FrameReader, ProtocolError


def _stream() -> tuple[bytes, list[tuple[int, bytes]]]:
    sent = [(1, b"small"), (2, b""), (3, bytes(range(256)) * 2000), (4, b"after the large one")]
    data = MAGIC + b"".join(
        frames.encode(cid, frames.REQUEST, payload, method=frames.MODEL_INFER, timeout_us=1500,
                      metadata=frames.encode_metadata({"k": "v"}))
        for cid, payload in sent
    )
    return data, sent


@pytest.mark.parametrize("chunk", [1, 7, 16, 17, 4096, 65536, 10**9])
def test_any_chunking_gives_the_same_frames(chunk: int) -> None:
    data, sent = _stream()
    reader = FrameReader(1 << 24, expect_magic=True)
    got = []
    for i in range(0, len(data), chunk):
        got.extend(reader.feed(data[i:i + chunk]))
    assert [(f.call_id, f.payload) for f in got] == sent
    assert all(f.method == frames.MODEL_INFER and f.timeout_us == 1500 for f in got)
    assert frames.decode_metadata(got[0].metadata) == {"k": "v"}


def test_refuses_a_peer_that_is_not_a_link() -> None:
    with pytest.raises(ProtocolError):
        FrameReader(1024, expect_magic=True).feed(b"PRI * HTTP/2.0\r\n")


@pytest.mark.parametrize("chunk", [1, 16, 100, 4096, 10**9])
def test_a_frame_over_the_limit_is_dropped_and_the_stream_stays_in_step(chunk: int) -> None:
    # The frame over the limit comes back as its header with too_large set (its payload is
    # never kept); the frames around it are read as usual, however the socket cuts the bytes.
    limit = 300 * 1024  # above FrameReader.LARGE: the large-frame path runs before and after the dropped one
    before, after = b"b" * (limit - 10), b"after"
    data = (frames.encode(1, frames.RESPONSE, before) + frames.encode(2, frames.RESPONSE, b"x" * (limit + 1),
                                                                       metadata=b"k\0v\0")
            + frames.encode(3, frames.ERROR, b"\x08too many") + frames.encode(4, frames.RESPONSE, after))
    reader = FrameReader(limit, expect_magic=False)
    got = []
    for i in range(0, len(data), chunk):
        got.extend(reader.feed(data[i:i + chunk]))
    assert [(f.call_id, f.kind, f.too_large, f.payload) for f in got] == [
        (1, frames.RESPONSE, 0, before), (2, frames.RESPONSE, limit + 1, b""), (3, frames.ERROR, 0, b"\x08too many"),
        (4, frames.RESPONSE, 0, after)]


def test_refuses_unknown_kinds() -> None:
    with pytest.raises(ProtocolError):
        FrameReader(100, expect_magic=False).feed(frames.encode(1, 9, b""))
