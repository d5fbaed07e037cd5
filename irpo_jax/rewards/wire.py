"""The reward bridge's wire protocol: length-prefixed frames of a JSON header and raw arrays.

Shared by the trainer's client (:mod:`irpo_jax.rewards.remote`) and the PyTorch reward process
(:mod:`torch_bridge.reward_server`). Pure numpy + the standard library, so the reward process
imports it (``from irpo_jax.rewards import wire``: the package loads its jax modules lazily)
without jax, and the trainer without torch. Keep it that way: no jax, no torch, no other
``irpo_jax`` module here (``tests/test_without_torch.py`` checks).

Frame layout (all integers little-endian)::

    magic     4 bytes   b"IRPW"
    hlen      uint32    length of the JSON header in bytes
    plen      uint64    length of the payload in bytes
    header    hlen bytes of UTF-8 JSON (an object; never pickle)
    payload   plen bytes: the arrays' raw bytes, each at a 64-byte-aligned offset

The header always carries ``"v"`` (:data:`PROTOCOL_VERSION`) and ``"type"``, and lists its arrays
as ``{"name", "dtype", "shape", "offset", "nbytes", "in"}`` where ``"in"`` is ``"payload"`` or
``"shm"``. Arrays are C-contiguous little-endian with a dtype from :data:`DTYPES` (float32 for
images and scores; never JPEG, never a lossy cast), so a float32 image arrives bit for bit.

Large image batches may instead travel through one POSIX shared-memory segment that the sender
owns (:class:`ShmArena`); the header then names it (``"shm": {"name", "size"}``) and the receiver
maps it once (:class:`ShmAttachments`) and views the arrays in place. Either way the receiver's
arrays are writable numpy views that ``torch.from_numpy`` wraps without a copy.

Sockets are loopback only (``unix:/path`` or ``tcp:127.0.0.1:PORT``): the protocol has no
authentication, so it must never listen on a network interface.

Message types (``header["type"]``):

=============  =========  =========================================================================
type           direction  content
=============  =========  =========================================================================
``hello``      both       handshake: the client sends its version; the server answers with its
                          version, pid, torch version, device and each component's ``info()``
``score``      to server  ``id``, ``components`` (names or null = all), arrays ``degraded``,
                          ``restored``, ``clean`` ``(B, H, W, 3)`` float32, optional ``sample_ids``
                          ``(B,)`` int64 and ``task_ids`` ``(B,)`` int32
``scores``     to client  ``id``, ``components``, ``timings_s``, ``errors``, ``server_s``; array
                          ``scores`` ``(B, n_components)`` float32, NaN = failed for that sample
``ping/pong``  both       liveness check
``shutdown``   to server  answered by ``bye``, then the server exits
``error``      to client  ``message``, ``kind`` (``"version"``, ``"request"``, ``"internal"``)
=============  =========  =========================================================================
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import socket
import struct
from collections.abc import Mapping
from multiprocessing import shared_memory
from typing import Any

import numpy as np

__all__ = [
    "ALIGN",
    "DTYPES",
    "MAGIC",
    "PROTOCOL_VERSION",
    "Message",
    "PeerClosed",
    "ProtocolError",
    "RewardResult",
    "ShmArena",
    "ShmAttachments",
    "connect",
    "listen",
    "parse_address",
    "recv_message",
    "result_from_reply",
    "send_message",
]

PROTOCOL_VERSION = 1  # bump on any incompatible change of the frame or of a message's fields
MAGIC = b"IRPW"
ALIGN = 64  # payload offsets are multiples of this: aligned views for numpy, torch and DLPack
_PREFIX = struct.Struct("<4sIQ")  # magic, header length, payload length
MAX_HEADER_BYTES = 1 << 20  # a header is a few hundred bytes; more means a corrupt or foreign frame
MAX_PAYLOAD_BYTES = 1 << 36  # 64 GiB: far above any batch, small enough to catch garbage lengths

# The only dtypes that travel, named by their numpy dtype string (explicit little-endian).
DTYPES = {s: np.dtype(s) for s in ("<f4", "<i4", "<i8", "|u1")}


class ProtocolError(RuntimeError):
    """A malformed, foreign or incompatible frame."""


class PeerClosed(ConnectionError):
    """The other side closed the connection (cleanly between frames or in the middle of one)."""


@dataclasses.dataclass
class Message:
    """One decoded frame.

    Attributes:
      header: the JSON header (``"v"``, ``"type"``, message fields; ``"arrays"`` is removed).
      arrays: name -> numpy view onto the received payload or the mapped shared memory.
      nbytes: bytes read from the socket for this frame (prefix + header + payload).
    """

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]
    nbytes: int


# --------------------------------------------------------------------------------------------
# Addresses and sockets
# --------------------------------------------------------------------------------------------


def parse_address(address: str) -> tuple[int, str | tuple[str, int]]:
    """Parses ``unix:/path/to.sock`` or ``tcp:HOST:PORT`` (HOST a loopback address or localhost).

    Args:
      address: the address string.

    Returns:
      ``(socket family, sockaddr)``.

    Raises:
      ValueError: for another form, or a TCP host that is not loopback (the protocol has no
        authentication; bind and connect to 127.0.0.1 or a Unix socket only).
    """
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if not path:
            raise ValueError(f"reward bridge address {address!r}: empty Unix socket path")
        return socket.AF_UNIX, path
    if address.startswith("tcp:"):
        host, sep, port = address[len("tcp:") :].rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"reward bridge address {address!r}: expected tcp:127.0.0.1:PORT")
        host = host.strip("[]")
        if host == "localhost":
            host = "127.0.0.1"
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(
                f"reward bridge address {address!r}: only loopback hosts are allowed (the protocol "
                "has no authentication); use tcp:127.0.0.1:PORT or unix:/path/to.sock"
            )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return family, (host, int(port))
    raise ValueError(f"reward bridge address {address!r}: expected 'unix:/path/to.sock' or 'tcp:127.0.0.1:PORT'")


def _format_address(family: int, sockaddr: Any) -> str:
    if family == socket.AF_UNIX:
        return f"unix:{sockaddr}"
    host, port = sockaddr[:2]
    return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"


def listen(address: str) -> tuple[socket.socket, str]:
    """Binds and listens on a loopback address.

    A stale Unix socket file (left by a killed server) is replaced; a live one is refused.

    Args:
      address: ``unix:/path`` or ``tcp:127.0.0.1:PORT`` (port 0 picks a free port).

    Returns:
      ``(listening socket, the actual address)`` (with the real port for ``tcp:...:0``).

    Raises:
      OSError: if the address is in use by a live server.
    """
    family, sockaddr = parse_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            if os.path.exists(sockaddr):
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(sockaddr)
                except OSError:
                    os.unlink(sockaddr)  # nobody listens: a leftover of a killed server
                else:
                    raise OSError(f"a reward server already listens on {address}")
                finally:
                    probe.close()
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(4)
    except BaseException:
        sock.close()
        raise
    return sock, _format_address(family, sock.getsockname())


def connect(address: str, timeout: float | None = None) -> socket.socket:
    """Connects to a reward server.

    Args:
      address: as for :func:`parse_address`.
      timeout: seconds for the connection and, afterwards, for every blocking socket call.

    Returns:
      The connected socket (TCP_NODELAY set: frames are written in a few parts).
    """
    family, sockaddr = parse_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(sockaddr)
    except BaseException:
        sock.close()
        raise
    if family != socket.AF_UNIX:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# --------------------------------------------------------------------------------------------
# Shared memory
# --------------------------------------------------------------------------------------------


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class ShmArena:
    """A sender-owned shared-memory segment reused for every request's image arrays.

    The segment grows (a new one replaces it) when a batch does not fit and is unlinked by
    :meth:`close`; if the owner dies first, Python's resource tracker unlinks it. Requests on one
    connection are strictly sequential, so a single segment is never overwritten while the
    receiver still reads it.
    """

    def __init__(self) -> None:
        self._shm: shared_memory.SharedMemory | None = None

    @property
    def name(self) -> str | None:
        return None if self._shm is None else self._shm.name

    def pack(self, arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Copies ``arrays`` into the segment.

        Returns:
          ``(shm reference for the header, array specs with "in": "shm")``.
        """
        specs, offset = [], 0
        for name, arr in arrays.items():
            spec = _spec(name, arr, offset, "shm")
            specs.append(spec)
            offset = _aligned(offset + spec["nbytes"])
        if self._shm is None or self._shm.size < offset:
            self.close()
            # Round up to 1 MiB and leave room to grow so a slightly larger batch reuses it.
            size = max(_aligned(offset), 1) * 5 // 4
            size = -(-size // (1 << 20)) * (1 << 20)
            self._shm = shared_memory.SharedMemory(create=True, size=size)
            _CREATED_HERE.add(self._shm.name)
        buf = np.ndarray((self._shm.size,), np.uint8, buffer=self._shm.buf)
        for spec, arr in zip(specs, arrays.values()):
            start = spec["offset"]
            dst = buf[start : start + spec["nbytes"]].view(spec["dtype"]).reshape(arr.shape)
            np.copyto(dst, arr, casting="no")
        del buf  # release the export so close() can unmap
        return {"name": self._shm.name, "size": self._shm.size}, specs

    def close(self) -> None:
        """Unmaps and unlinks the segment (idempotent)."""
        if self._shm is not None:
            shm, self._shm = self._shm, None
            try:
                shm.close()
            finally:
                try:
                    shm.unlink()
                except FileNotFoundError:
                    pass
                _CREATED_HERE.discard(shm.name)


_CREATED_HERE: set[str] = set()  # segments this process created (its tracker must keep them)


class ShmAttachments:
    """Receiver side: maps the sender's segments by name and keeps them mapped for reuse."""

    def __init__(self) -> None:
        self._maps: dict[str, shared_memory.SharedMemory] = {}

    def view(self, name: str, size: int) -> memoryview:
        """Returns the mapped buffer of segment ``name`` (attaching on first use)."""
        shm = self._maps.get(name)
        if shm is None:
            for old in list(self._maps):  # the sender replaced its segment: drop the old one
                self._drop(old)
            shm = _attach_untracked(name)
            self._maps[name] = shm
        if shm.size < size:
            raise ProtocolError(f"shared memory {name!r} has {shm.size} bytes, header says {size}")
        return shm.buf

    def _drop(self, name: str) -> None:
        shm = self._maps.pop(name)
        try:
            shm.close()
        except BufferError:  # a view is still alive somewhere; the mapping goes at exit
            pass

    def close(self) -> None:
        for name in list(self._maps):
            self._drop(name)


def _attach_untracked(name: str) -> shared_memory.SharedMemory:
    """Attaches to an existing segment without letting this process's resource tracker own it.

    Before Python 3.13 attaching registers the segment with the attaching process's resource
    tracker, which *unlinks* it when that process exits (cpython issue 82300): a restarted reward
    process would then find its client's segment gone. The sender owns and unlinks it.
    """
    try:
        return shared_memory.SharedMemory(name=name, track=False)  # Python >= 3.13
    except TypeError:
        pass
    from multiprocessing import resource_tracker

    shm = shared_memory.SharedMemory(name=name)
    if name in _CREATED_HERE:  # sender and receiver in one process (tests): one registration
        return shm
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001 (see above)
    except Exception:  # pragma: no cover - the tracker is best effort
        pass
    return shm


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


def _spec(name: str, arr: np.ndarray, offset: int, where: str) -> dict[str, Any]:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"array {name!r}: expected a numpy array, got {type(arr).__name__}")
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    if dtype.str not in DTYPES:
        raise TypeError(
            f"array {name!r}: dtype {arr.dtype} cannot travel; allowed: float32, int32, int64, "
            "uint8 (cast explicitly, e.g. images to float32)"
        )
    return {
        "name": name,
        "dtype": dtype.str,
        "shape": list(arr.shape),
        "offset": offset,
        "nbytes": int(arr.nbytes),
        "in": where,
    }


def _wire_array(arr: np.ndarray) -> np.ndarray:
    """C-contiguous, little-endian (a no-op on every platform we run on)."""
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr)


def send_message(
    sock: socket.socket,
    header: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray] | None = None,
    *,
    arena: ShmArena | None = None,
) -> int:
    """Writes one frame.

    Args:
      sock: a connected stream socket.
      header: JSON-serialisable fields; ``"type"`` is required, ``"v"`` is added. Floats must be
        finite (strict JSON): scores travel as arrays, never in the header.
      arrays: name -> numpy array (see :data:`DTYPES`), sent as raw bytes after the header.
      arena: if given, the arrays go into this shared-memory segment instead of the payload.

    Returns:
      The number of bytes written to the socket.
    """
    if "type" not in header:
        raise ValueError("a message header needs a 'type'")
    arrays = {name: _wire_array(arr) for name, arr in (arrays or {}).items()}
    head = dict(header, v=PROTOCOL_VERSION)
    parts: list[np.ndarray] = []
    if arena is not None and arrays:
        head["shm"], specs = arena.pack(arrays)
        payload_len = 0
    else:
        specs, offset = [], 0
        for name, arr in arrays.items():
            specs.append(_spec(name, arr, offset, "payload"))
            parts.append(arr)
            offset = _aligned(offset + arr.nbytes)
        payload_len = offset
    head["arrays"] = specs
    header_bytes = json.dumps(head, allow_nan=False, separators=(",", ":")).encode()
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise ValueError(f"message header of {len(header_bytes)} bytes exceeds {MAX_HEADER_BYTES}")
    sock.sendall(_PREFIX.pack(MAGIC, len(header_bytes), payload_len) + header_bytes)
    written = 0
    for spec, arr in zip(specs, parts):
        if spec["offset"] > written:
            sock.sendall(bytes(spec["offset"] - written))  # alignment padding
        # memoryview of the array itself: no copy into an intermediate bytes object.
        sock.sendall(memoryview(arr.reshape(-1).view(np.uint8)))
        written = spec["offset"] + arr.nbytes
    if payload_len > written:
        sock.sendall(bytes(payload_len - written))
    return _PREFIX.size + len(header_bytes) + payload_len


def _recv_exact(sock: socket.socket, view: memoryview, *, at_boundary: bool = False) -> None:
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            if at_boundary and got == 0:
                raise PeerClosed("the peer closed the connection")
            raise PeerClosed(f"the peer closed the connection inside a frame ({got}/{n} bytes)")
        got += k


def recv_message(sock: socket.socket, *, shm: ShmAttachments | None = None) -> Message:
    """Reads one frame.

    Args:
      sock: a connected stream socket (its timeout applies to every read).
      shm: mapped segments for frames whose arrays are in shared memory; a frame that references
        shared memory without it is a :class:`ProtocolError`.

    Returns:
      The decoded :class:`Message`. Payload arrays are views onto one 64-byte-aligned buffer;
      shared-memory arrays are views onto the mapping (valid until the sender's next frame).

    Raises:
      PeerClosed: the connection ended.
      ProtocolError: a foreign or corrupt frame, or another protocol version.
      TimeoutError: the socket timeout passed.
    """
    prefix = bytearray(_PREFIX.size)
    _recv_exact(sock, memoryview(prefix), at_boundary=True)
    magic, hlen, plen = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError(f"not a reward-bridge frame (magic {bytes(magic)!r}, not {MAGIC!r})")
    if hlen > MAX_HEADER_BYTES or plen > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"implausible frame lengths: header {hlen}, payload {plen}")
    raw = bytearray(hlen)
    _recv_exact(sock, memoryview(raw))
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise ProtocolError(f"frame header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    # The payload follows the header: read it before judging the header so the stream stays in
    # sync (the caller may answer a bad request and keep the connection).
    store = np.empty(plen + ALIGN, np.uint8)
    start = (-store.ctypes.data) % ALIGN
    payload = store[start : start + plen]
    _recv_exact(sock, memoryview(payload))
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version mismatch: peer speaks v{header.get('v')}, this side "
            f"v{PROTOCOL_VERSION}; run the trainer and the reward process from the same checkout"
        )
    specs = header.pop("arrays", [])
    shm_ref = header.get("shm")
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        arrays[spec.get("name", "?")] = _view(spec, payload, shm_ref, shm)
    return Message(header=header, arrays=arrays, nbytes=_PREFIX.size + hlen + plen)


def _view(spec: Mapping[str, Any], payload: np.ndarray, shm_ref: Any, shm: ShmAttachments | None) -> np.ndarray:
    try:
        name, dtype_str, shape = spec["name"], spec["dtype"], tuple(int(s) for s in spec["shape"])
        offset, nbytes, where = int(spec["offset"]), int(spec["nbytes"]), spec["in"]
    except (KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"malformed array spec {spec!r}: {e}") from None
    dtype = DTYPES.get(dtype_str)
    if dtype is None:
        raise ProtocolError(f"array {name!r}: dtype {dtype_str!r} not allowed on the wire")
    if any(s < 0 for s in shape) or math.prod(shape) * dtype.itemsize != nbytes:
        raise ProtocolError(f"array {name!r}: shape {shape} and {nbytes} bytes disagree")
    if offset < 0 or offset % ALIGN:
        raise ProtocolError(f"array {name!r}: bad offset {offset}")
    if where == "payload":
        base = payload
    elif where == "shm":
        if shm is None or not isinstance(shm_ref, dict):
            raise ProtocolError(f"array {name!r} is in shared memory but no segment is available")
        size = int(shm_ref["size"])
        base = np.ndarray((size,), np.uint8, buffer=shm.view(str(shm_ref["name"]), size))
    else:
        raise ProtocolError(f"array {name!r}: unknown location {where!r}")
    if offset + nbytes > base.size:
        raise ProtocolError(f"array {name!r} runs past the end of its buffer")
    return base[offset : offset + nbytes].view(dtype).reshape(shape)


# --------------------------------------------------------------------------------------------
# Score replies
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RewardResult:
    """Per-sample, per-component raw scores for one request.

    Attributes:
      request_id: the request's id.
      scores: component name -> ``(B,)`` float32 raw scores; NaN = failed for that sample.
      timings_s: component name -> seconds the component took inside the reward process.
      errors: component name -> error text, for components that raised (their scores are NaN).
      server_s: seconds the server spent on the request (decode, every component, encode).
      roundtrip_s: seconds from sending the request to decoding the reply (0 in-process).
      attempts: 1, or more when the reward process was restarted and the request re-sent.
    """

    request_id: int
    scores: dict[str, np.ndarray]
    timings_s: dict[str, float]
    errors: dict[str, str]
    server_s: float
    roundtrip_s: float = 0.0
    attempts: int = 1

    def nan_counts(self) -> dict[str, int]:
        """Failed samples per component (for logging the failure rate)."""
        return {name: int(np.isnan(s).sum()) for name, s in self.scores.items()}


def result_from_reply(message: Message, *, roundtrip_s: float = 0.0, attempts: int = 1) -> RewardResult:
    """Turns a ``scores`` message into a :class:`RewardResult` (copying the scores out)."""
    header = message.header
    names = list(header["components"])
    table = message.arrays.get("scores")
    if table is None or table.shape != (table.shape[0], len(names)) or table.dtype != np.float32:
        raise ProtocolError(f"scores reply: expected a (B, {len(names)}) float32 'scores' array")
    return RewardResult(
        request_id=int(header["id"]),
        scores={name: table[:, j].copy() for j, name in enumerate(names)},
        timings_s={k: float(v) for k, v in header.get("timings_s", {}).items()},
        errors=dict(header.get("errors", {})),
        server_s=float(header.get("server_s", 0.0)),
        roundtrip_s=roundtrip_s,
        attempts=attempts,
    )
