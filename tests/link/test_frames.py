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


def test_refuses_frames_over_the_limit() -> None:
    reader = FrameReader(100, expect_magic=False)
    with pytest.raises(ProtocolError):
        reader.feed(frames.encode(1, frames.REQUEST, b"x" * 101))


def test_refuses_unknown_kinds() -> None:
    with pytest.raises(ProtocolError):
        FrameReader(100, expect_magic=False).feed(frames.encode(1, 9, b""))
