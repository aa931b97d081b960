"""Message framing of Pyro protocol 48: bytes in, messages out, and back.

Pure code over bytes. It knows nothing of sockets, threads or clocks, so the
daemon, the proxy and the tests all drive it the same way: ``feed()`` whatever
bytes arrived, then take complete messages with ``next_message()`` until it
returns None.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import itertools
import struct
import sys
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Protocol, Union, overload

from .constants import PROTOCOL_VERSION
from .errors import MessageTooLargeError, ProtocolError, SecurityError

HEADER = struct.Struct("!4sHHHHiHHHH")
HEADER_SIZE = HEADER.size  # 24
TAG = b"PYRO"
# The first bytes of a TLS handshake record (type 22, version 3.x): what a ClientHello starts with.
_TLS_HANDSHAKE_RECORD = b"\x16\x03"
_CHECKSUM_MAGIC = 0x34E9

MSG_CONNECT = 1
MSG_CONNECTOK = 2
MSG_CONNECTFAIL = 3
MSG_INVOKE = 4
MSG_RESULT = 5
MSG_PING = 6

FLAGS_EXCEPTION = 1 << 0
FLAGS_COMPRESSED = 1 << 1
FLAGS_ONEWAY = 1 << 2
FLAGS_BATCH = 1 << 3
FLAGS_META_ON_CONNECT = 1 << 4
FLAGS_ITEMSTREAMRESULT = 1 << 5
FLAGS_KEEPSERIALIZED = 1 << 6

#: Bound on a decompressed payload when MAX_MESSAGE_SIZE is 0 ("unlimited").
DECOMPRESSED_LIMIT = 256 * 1024 * 1024

#: Payloads shorter than this are never compressed (Pyro4's rule).
COMPRESSION_THRESHOLD = 200

#: Payloads from this size on are received straight into a buffer of their
#: own (``FrameReader.receive_into``), not gathered piece by piece.
DIRECT_RECEIVE_SIZE = 256 * 1024

#: Payloads up to this size get a buffer of their declared size at once,
#: larger ones a buffer that doubles with what arrived...
EXACT_RECEIVE_SIZE = 16 * 1024 * 1024
#: ... from this size on (a smaller one grows in few steps)
EXACT_RECEIVE_MIN = 1024 * 1024

#: Payloads from this size on are sent as the buffers they are made of
#: (``Buffers``), behind the header, rather than joined into one frame.
GATHER_SIZE = 256 * 1024


class Buffers:
    """Bytes held as several buffers, to be written one after the other, never joined.

    A large payload (the caller's ``bytes`` between a few bytes of serializer
    framing), or a whole frame (header and annotations, then such a payload).
    Joining would copy every byte once more, into fresh memory the kernel maps
    page by page: for 10 MB that costs more than sending it. ``len()`` is the
    total size; ``bytes()`` joins them (for tests, and for a path that needs
    one piece). The parts are bytes or byte-format memoryviews; empty ones are
    left out.
    """

    __slots__ = ("parts", "_size")

    def __init__(self, parts: Iterable[bytes | bytearray | memoryview]) -> None:
        self.parts: tuple[bytes | bytearray | memoryview, ...] = tuple(part for part in parts if len(part))
        self._size = sum(len(part) for part in self.parts)

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)

    def __repr__(self) -> str:
        return f"<Buffers: {len(self.parts)} parts, {self._size} bytes>"


#: A payload, or a frame: one buffer, or several to write in turn
Data = Union[bytes, bytearray, Buffers]


def parts(data: Data) -> tuple[bytes | bytearray | memoryview, ...]:
    """The buffers ``data`` is made of, in order."""
    return data.parts if type(data) is Buffers else (data,)


#: Buffers one ``Outbox.send_to`` hands to the socket at most
_SEND_PARTS = 16


class Outbox:
    """Bytes waiting for a socket, in order: what a connection's owner sends as the socket allows.

    Small messages are copied together into one bytearray (a send takes many
    at once); a buffer of ``GATHER_SIZE`` or more that cannot change (``bytes``,
    a read-only view) is kept as it is, so a large reply or call is never
    copied on its way out, however many sends it takes. ``+=`` appends bytes,
    a view or ``Buffers``; ``len()`` (or ``size``, read without a call) is what
    is waiting; ``send_to()`` writes.
    """

    __slots__ = ("_parts", "size")

    def __init__(self) -> None:
        self._parts: collections.deque[bytearray | memoryview] = collections.deque()
        #: bytes waiting (read it; only the box changes it)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __iadd__(self, data: Data | memoryview) -> "Outbox":
        queue = self._parts
        for part in parts(data):
            size = len(part)
            if size >= GATHER_SIZE and (type(part) is bytes or type(part) is memoryview and part.readonly):
                queue.append(memoryview(part).cast("B"))
            elif size:
                if queue and type(queue[-1]) is bytearray:
                    queue[-1] += part
                else:
                    queue.append(bytearray(part))
            self.size += size
        return self

    def send_to(self, transport: "_Sender") -> int:
        """Write what ``transport`` takes now, in one call, and drop it from the box.

        Returns the number of bytes written; raises as the transport's
        ``send`` or ``send_parts`` (``BlockingIOError`` when it took none).
        """
        queue = self._parts
        if len(queue) == 1:  # one buffer: a plain send, no list of buffers for sendmsg
            sent = transport.send(queue[0])
        else:
            sent = transport.send_parts(list(itertools.islice(queue, _SEND_PARTS)))
        self.size -= sent
        left = sent
        while left:
            head = queue[0]
            if left < len(head):
                if type(head) is bytearray:
                    del head[:left]  # a bytearray drops its front without moving the rest
                else:
                    queue[0] = head[left:]
                break
            left -= len(head)
            queue.popleft()
        return sent


class _Sender(Protocol):
    """What ``Outbox.send_to`` writes through (the transports of ``_transport``)."""

    def send(self, data: bytearray | memoryview) -> int:
        """Write from ``data`` what the socket takes now; the count written."""

    def send_parts(self, buffers: list[bytearray | memoryview]) -> int:
        """Write from ``buffers``, in order, what the socket takes now; the count written."""


@dataclass
class Message:
    """One protocol message. ``data`` is the payload exactly as on the wire."""

    type: int
    # a bytearray when received straight into its own buffer; Buffers when a large one is sent
    data: bytes | bytearray | Buffers
    serializer_id: int
    flags: int = 0
    seq: int = 0
    annotations: dict[str, bytes] = field(default_factory=dict)

    def payload(self, max_size: int = 0) -> bytes:
        """The payload, decompressed if the COMPRESSED flag says so.

        The decompressed size is bounded by ``max_size``, or by
        ``DECOMPRESSED_LIMIT`` when that is 0 ("unlimited"): zlib expands up to
        about a thousandfold, so without a bound a frame of a few megabytes
        could claim gigabytes of memory.
        """
        if not self.flags & FLAGS_COMPRESSED:
            return self.data
        limit = max_size or DECOMPRESSED_LIMIT
        out = _inflate(self.data, limit)
        if out is None:
            raise MessageTooLargeError(f"decompressed payload exceeds {limit} bytes")
        return out

    def small_payload(self, limit: int) -> bytes | bytearray | None:
        """The payload if it is at most ``limit`` bytes once decompressed, else None.

        Costs at most ``limit`` bytes of inflating, however far the payload
        would expand: this is how the loop's thread tells a small request from
        a compressed bomb without paying for the bomb.
        """
        if not self.flags & FLAGS_COMPRESSED:
            return self.data if len(self.data) <= limit else None
        return _inflate(self.data, limit)


#: Decompressed bytes per inflating step: each step is a short hold of the
#: interpreter lock (one call over a large payload holds it for seconds)
INFLATE_STEP = 1024 * 1024


def _inflate(data: bytes | bytearray, limit: int) -> bytes | None:
    """``data`` decompressed, or None if that is more than ``limit`` bytes.

    Inflated ``INFLATE_STEP`` bytes at a time, so a worker thread inflating
    a large reply lets the host loop's thread run between steps.
    zlib.error for a broken or truncated stream.
    """
    inflater = zlib.decompressobj()
    pieces = []
    total = 0
    pending: bytes | bytearray = data
    while not inflater.eof:
        given = pending
        piece = inflater.decompress(given, min(INFLATE_STEP, limit - total + 1))
        pending = inflater.unconsumed_tail
        if not piece and not pending and not given:  # asked once more with nothing left: no end
            raise zlib.error("incomplete or truncated compressed payload")
        total += len(piece)
        if total > limit:
            return None
        pieces.append(piece)
    return b"".join(pieces)


def checksum(msg_type: int, flags: int, seq: int, data_len: int, serializer_id: int, ann_len: int) -> int:
    return (msg_type + PROTOCOL_VERSION + data_len + ann_len + serializer_id + flags + seq
            + _CHECKSUM_MAGIC) & 0xFFFF


def hmac_digest(key: bytes, data: Data, annotations: dict[str, bytes]) -> bytes:
    """HMAC-SHA1 over the payload as sent, then every other annotation by sorted id."""
    mac = hmac.new(key, digestmod=hashlib.sha1)
    for part in parts(data):
        mac.update(part)
    for name in sorted(annotations):
        if name != "HMAC":
            mac.update(annotations[name])
    return mac.digest()


def encode(msg: Message, hmac_key: bytes | None = None, gather: bool = False) -> bytes | Buffers:
    """The bytes of one message, signed when a key is given.

    With ``gather``, a payload of ``GATHER_SIZE`` or more (or one that is
    ``Buffers`` already) is not copied: the result is ``Buffers`` of the
    header and annotations, then the payload's own buffers. Otherwise one
    ``bytes``; the bytes on the wire are the same either way.
    """
    annotations = msg.annotations
    if hmac_key:
        annotations = dict(annotations)
        annotations.pop("HMAC", None)
        annotations["HMAC"] = hmac_digest(hmac_key, msg.data, annotations)
    chunks = []
    for name, value in annotations.items():
        if len(name) != 4:
            raise ProtocolError(f"annotation id must be 4 characters: {name!r}")
        chunks.append(name.encode("ascii"))
        chunks.append(struct.pack("!H", len(value)))
        chunks.append(value)
    ann = b"".join(chunks)
    if len(ann) > 0xFFFF:
        raise ProtocolError("annotations too large (more than 65535 bytes together)")
    data_len = len(msg.data)
    header = HEADER.pack(TAG, PROTOCOL_VERSION, msg.type, msg.flags, msg.seq, data_len,
                         msg.serializer_id, len(ann), 0,
                         checksum(msg.type, msg.flags, msg.seq, data_len, msg.serializer_id, len(ann)))
    if gather and (type(msg.data) is Buffers or data_len >= GATHER_SIZE):
        return Buffers((header + ann, *parts(msg.data)))
    return b"".join((header, ann, *parts(msg.data)))


@overload
def compress_if_useful(data: bytes, flags: int) -> tuple[bytes, int]: ...
@overload
def compress_if_useful(data: Data, flags: int) -> tuple[Data, int]: ...


def compress_if_useful(data: Data, flags: int) -> tuple[Data, int]:
    """Apply Pyro4's compression rule: only if large enough and actually smaller.

    ``Buffers`` are compressed part by part into one ``bytes`` (the same
    stream ``zlib.compress`` makes of them joined), or returned as they are.
    """
    if len(data) < COMPRESSION_THRESHOLD:
        return data, flags
    if type(data) is Buffers:
        compressor = zlib.compressobj()
        packed = b"".join([*(compressor.compress(part) for part in data.parts), compressor.flush()])
    else:
        packed = zlib.compress(data)
    if len(packed) < len(data):
        return packed, flags | FLAGS_COMPRESSED
    return data, flags


def check_hmac(msg: Message, key: bytes | None) -> None:
    """Raise SecurityError unless the message's HMAC matches ``key`` (protocol notes 1.6)."""
    digest = msg.annotations.get("HMAC")
    if digest is None and not key:
        return
    if digest is None or not key:
        raise SecurityError("hmac key config not symmetric")
    if not hmac.compare_digest(digest, hmac_digest(key, msg.data, msg.annotations)):
        raise SecurityError("message hmac mismatch")


def _parse_annotations(blob: bytes) -> dict[str, bytes]:
    annotations = {}
    pos, end = 0, len(blob)
    while pos < end:
        if end - pos < 6:
            raise ProtocolError("truncated annotation chunk")
        name = blob[pos:pos + 4]
        (length,) = struct.unpack_from("!H", blob, pos + 4)
        pos += 6
        if pos + length > end:
            raise ProtocolError("annotation chunk longer than the annotations block")
        try:
            annotations[name.decode("ascii")] = blob[pos:pos + length]
        except UnicodeDecodeError:
            raise ProtocolError("annotation id is not ASCII") from None
        pos += length
    return annotations


def _references_of_a_local() -> int:
    """What ``sys.getrefcount`` says of an object only a local variable holds
    (each Python version counts the call's own reference its way)."""
    local = bytearray()
    return sys.getrefcount(local)


_SOLE_REFERENCE = _references_of_a_local()


def _exact(data_len: int) -> bool:
    """True if a payload of ``data_len`` bytes gets a buffer of that size at once."""
    return EXACT_RECEIVE_MIN <= data_len <= EXACT_RECEIVE_SIZE


class FrameError(ProtocolError):
    """The byte stream is not valid Pyro framing; the connection cannot continue."""


def _not_pyro(buf: bytes | bytearray) -> FrameError:
    """The error for a stream that does not start as Pyro; a TLS handshake is named,
    since a client configured for SSL talking to a plain daemon is the usual cause."""
    reason = "invalid data or unsupported protocol version"
    if bytes(buf[:2]) == _TLS_HANDSHAKE_RECORD:
        reason += " (a TLS handshake: the peer uses SSL, this end does not; both ends must set SSL)"
    return FrameError(reason)


class FrameReader:
    """Assembles messages from a byte stream that arrives in arbitrary pieces.

    ``max_message_size`` (0 = unlimited) is checked against the header's length
    fields before any payload is buffered, so an oversize announcement costs
    24 bytes of memory, not the announced size.

    A payload of ``DIRECT_RECEIVE_SIZE`` or more, once its header and
    annotations are in, is received into a buffer of its own that becomes the
    message's ``data`` as it is: ``receive_into()`` hands the socket that
    buffer's empty part, so no piece is copied on the way. From
    ``EXACT_RECEIVE_MIN`` up to ``EXACT_RECEIVE_SIZE`` the buffer has the
    declared size from the start:
    growing it (zero-filling each new part, and copying when the allocator
    moves it) cost three times the receiving itself. Such a buffer counts as
    ``buffered`` in full, so the owner's bound on buffered input covers what
    was set aside for peers that announce much and send little. A larger
    payload's buffer doubles as it fills (a large bytearray grows by
    remapping, not copying) up to the declared size: a peer that announces
    gigabytes and sends nothing gets no gigabytes.

    The buffer of the last such payload is used again for the next one of
    about its size once nothing else holds it (the decoder copied what it
    needed out of it): fresh memory of that size is mapped page by page, which
    costs more than receiving into it.
    """

    __slots__ = ("_buf", "max_message_size", "_header", "_body", "_filled", "_spare")

    def __init__(self, max_message_size: int = 0) -> None:
        self._buf = bytearray()
        self.max_message_size = max_message_size
        self._header: tuple | None = None
        self._body: bytearray | None = None  # the payload being received directly
        self._filled = 0
        self._spare: bytearray | None = None  # the last payload buffer of declared size, for the next

    def feed(self, data: bytes) -> None:
        if self._body is None:
            self._buf += data
            return
        view = memoryview(data)
        while view:
            room = self.receive_into()
            if room is None:
                self._buf += view
                return
            take = min(len(view), len(room))
            room[:take] = view[:take]
            room.release()  # the buffer may have to grow next time round
            self._filled += take
            view = view[take:]

    def receive_into(self) -> memoryview | None:
        """The empty part of a large payload's buffer, for ``sock.recv_into``;
        report what arrived with ``received(n)`` and release the view (the
        buffer cannot grow while it is held). None while no large payload is
        under way (or it is complete): then ``feed()`` what ``recv`` returns."""
        body = self._body
        if body is None:
            return None
        if self._filled == len(body):
            target = self._header[3]
            if len(body) == target:
                return None
            body.extend(bytes(min(len(body), target - len(body))))
        return memoryview(body)[self._filled:]

    def received(self, count: int) -> None:
        """``count`` bytes were written into the view ``receive_into()`` gave."""
        self._filled += count

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a message; a payload
        buffer made at its declared size counts in full."""
        if self._body is not None and _exact(self._header[3]):
            return len(self._buf) + len(self._body)
        return len(self._buf) + self._filled

    def next_size(self) -> tuple[int, int] | None:
        """``(payload length, flags)`` of the next message once all of it is in, else None.

        Lets an owner decide where to decode a message before it is decoded
        (a large or compressed reply goes to a worker thread). A header that
        cannot be read gives None: ``next_message()`` then raises for it.
        """
        if self._header is None:
            if len(self._buf) < HEADER_SIZE:
                return None
            try:
                self._header = self._parse_header(self._buf)
            except ProtocolError:
                return None
        _, flags, _, data_len, _, ann_len = self._header
        if self._body is not None:
            complete = self._filled >= data_len
        else:
            complete = len(self._buf) >= HEADER_SIZE + ann_len + data_len
        return (data_len, flags) if complete else None

    def next_message(self) -> Message | None:
        """The next complete message, or None if more bytes are needed.

        Raises FrameError (or MessageTooLargeError) for a stream that cannot be
        read further; after that the reader must not be used again.
        """
        buf = self._buf
        header = self._header
        if header is None:
            if len(buf) < HEADER_SIZE:
                if len(buf) >= 4 and buf[:4] != TAG or len(buf) < 4 and TAG[:len(buf)] != buf:
                    raise _not_pyro(buf)
                return None
            header = self._header = self._parse_header(buf)
        msg_type, flags, seq, data_len, ser_id, ann_len = header
        body = self._body
        if body is not None:
            if self._filled < data_len:
                return None
            data: bytes | bytearray = body
            self._body = None
            self._filled = 0
            if _exact(data_len):
                self._spare = body
        else:
            total = HEADER_SIZE + ann_len + data_len
            if len(buf) < total:
                if data_len >= DIRECT_RECEIVE_SIZE and len(buf) >= HEADER_SIZE + ann_len:
                    self._start_body(data_len, ann_len)
                return None
            data = bytes(buf[HEADER_SIZE + ann_len:total])
            del buf[HEADER_SIZE + ann_len:total]
        annotations = _parse_annotations(bytes(buf[HEADER_SIZE:HEADER_SIZE + ann_len])) if ann_len else {}
        del buf[:HEADER_SIZE + ann_len]
        self._header = None
        return Message(msg_type, data, ser_id, flags, seq, annotations)

    def _start_body(self, data_len: int, ann_len: int) -> None:
        """Move the payload received so far into a buffer of its own."""
        start = HEADER_SIZE + ann_len
        have = len(self._buf) - start
        if _exact(data_len):
            body = self._body = self._reusable(data_len) or bytearray(data_len)
        else:
            body = self._body = bytearray(min(data_len, max(2 * have, DIRECT_RECEIVE_SIZE)))
        body[:have] = memoryview(self._buf)[start:]
        self._filled = have
        del self._buf[start:]

    def _reusable(self, size: int) -> bytearray | None:
        """The last payload buffer cut to ``size`` bytes, if nothing else refers
        to it (no message, memoryview or value) and it is at most twice that
        size; else None. Its old bytes are all overwritten by the new payload."""
        spare, self._spare = self._spare, None
        if spare is None or sys.getrefcount(spare) != _SOLE_REFERENCE or not size <= len(spare) < 2 * size:
            return None
        del spare[size:]  # a bytearray shrinks in place
        return spare

    def _parse_header(self, buf: bytearray) -> tuple:
        tag, version, msg_type, flags, seq, data_len, ser_id, ann_len, _reserved, check = \
            HEADER.unpack_from(buf)
        if tag != TAG or version != PROTOCOL_VERSION:
            raise _not_pyro(buf)
        if check != checksum(msg_type, flags, seq, data_len, ser_id, ann_len):
            raise FrameError("header checksum mismatch")
        if data_len < 0:
            raise FrameError("negative payload length")
        if self.max_message_size and data_len + ann_len > self.max_message_size:
            raise MessageTooLargeError(
                f"max message size exceeded ({data_len + ann_len} where max={self.max_message_size})")
        return msg_type, flags, seq, data_len, ser_id, ann_len
