"""The trainer's client for the PyTorch reward process (``torch_bridge.reward_server``).

Typical use, right after the rollouts so torch scoring overlaps the trainer's JAX work::

    with RewardProcess.from_config(cfg.reward) as rewards:        # spawns, loads, handshakes
        future = rewards.request(degraded, restored, clean, task_ids, sample_ids)
        jax_scores = jax_reward_scores(...)                         # meanwhile, in JAX
        remote = future.result(timeout=...).scores                  # name -> (B,) raw scores
        total, parts = compose(jax_scores, remote, cfg.reward)

or :func:`open_reward_bridge` to pick the process, in-process or no bridge from the config.
:class:`RewardProcess` is one of the two implementations of
:class:`irpo_jax.rewards.bridge.RewardBridge`, whose docstring states the contract.

Two ways to get a process:

* :meth:`RewardProcess.start` spawns ``python -m torch_bridge.reward_server`` as a child in its
  own session with its own environment (``CUDA_VISIBLE_DEVICES`` set before torch is imported
  there), a private temporary directory holding the Unix socket, the config and the log, and
  ``--parent_pid`` so the child exits if the trainer is killed.
* :meth:`RewardProcess.connect` attaches to a server started by hand (``unix:/...`` or
  ``tcp:127.0.0.1:PORT``), e.g. in another virtual environment or on other GPUs.

Requests are queued and sent, one at a time, by a background thread; :meth:`RewardProcess.request`
returns a ``concurrent.futures.Future`` at once (jax arrays are copied to the host on that thread,
so the call does not wait for the rollouts). Faults are detected and bounded:

* a reply that does not come within ``request_timeout_s`` means the process is hung; a closed
  connection or an exited process means it crashed. Either way the process is killed (its whole
  process group), a new one is started (or the address reconnected) and the **same request is
  re-sent**; at most ``max_restarts`` times per request, after which the request's future, every
  queued one and every later call raise :class:`RewardProcessError` with the reason for each
  attempt and the tail of the server's log. A request is never silently dropped.
* a start-up failure because a component cannot be built (missing weights) is not retried: the
  error names the component and the path, from the server's log.
* a bad request (unknown component, wrong shapes) raises ``ValueError`` from ``request`` or its
  future, without restarting anything.

:meth:`RewardProcess.close` (also the context manager's exit, and an ``atexit`` hook for clients
still open at interpreter exit) sends ``shutdown``, waits for the process, kills it if needed and
removes its temporary directory and shared memory: no orphan processes, sockets or segments.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import itertools
import json
import os
import pathlib
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from irpo_jax.rewards import wire
from irpo_jax.rewards.bridge import RewardBridge

__all__ = [
    "DEFAULT_REGISTRY",
    "RewardProcess",
    "RewardProcessError",
    "bridge_components_config",
    "open_reward_bridge",
]

DEFAULT_REGISTRY = "torch_bridge.reward_models:COMPONENTS"
_SOURCE_ROOT = pathlib.Path(__file__).resolve().parents[2]  # holds irpo_jax/ and torch_bridge/
_EXIT_REASONS = {3: "a reward component could not be built", 4: "the address could not be bound"}
_LOG_TAIL_CHARS = 3000


class RewardProcessError(RuntimeError):
    """The reward process failed beyond the configured restarts, or could not start."""


class _Fatal(Exception):
    """A failure that restarting cannot fix (start-up error, version mismatch)."""


@dataclasses.dataclass
class _Request:
    rid: int
    names: list[str] | None
    arrays: dict[str, Any]  # host numpy arrays, or jax arrays converted on the worker thread
    future: concurrent.futures.Future


_STOP = object()
_LIVE: weakref.WeakSet[RewardProcess] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for client in list(_LIVE):
        try:
            client.close(timeout=10)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _host_float32(x: Any, name: str) -> np.ndarray:
    """The image as a C-contiguous float32 numpy array; only exact up-casts are allowed."""
    a = np.asarray(x)
    if a.dtype == np.float32:
        return np.ascontiguousarray(a)
    if a.dtype == np.float16 or a.dtype.name == "bfloat16":
        return a.astype(np.float32)  # exact
    raise TypeError(f"{name}: expected float32 images, got {a.dtype}; cast explicitly if intended")


class RewardProcess(RewardBridge):
    """Client of one reward process; see the module docstring. Build with :meth:`start`,
    :meth:`connect` or :meth:`from_config`. ``score`` and the context manager come from
    :class:`~irpo_jax.rewards.bridge.RewardBridge`."""

    def __init__(
        self,
        *,
        address: str,
        launch: dict[str, Any] | None,
        transport: str,
        start_timeout_s: float,
        request_timeout_s: float,
        max_restarts: int,
    ) -> None:
        if transport not in ("socket", "shm"):
            raise ValueError(f"transport {transport!r}: choose 'socket' or 'shm'")
        self.address = address
        self.transport = transport
        self.start_timeout_s = float(start_timeout_s)
        self.request_timeout_s = float(request_timeout_s)
        self.max_restarts = int(max_restarts)
        self._launch = launch  # None when connected to a server started by hand
        self._proc: subprocess.Popen | None = None
        self._sock = None
        self._arena = wire.ShmArena() if transport == "shm" else None
        self.info: dict[str, Any] = {}
        self._identity: dict[str, Any] | None = None
        self._ids = itertools.count(1)
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._broken: RewardProcessError | None = None
        self._lock = threading.Lock()
        self.restarts = 0
        self.requests = 0
        self.pids: list[int] = []
        self._thread: threading.Thread | None = None
        self._launch_shutdown = False  # set by shutdown_server() for a server started by hand

    # ---------------------------------------------------------------------------- construction

    @classmethod
    def start(
        cls,
        components: Mapping[str, Mapping[str, Any]],
        *,
        device: str = "cpu",
        cuda_visible_devices: str = "inherit",
        registry: str = DEFAULT_REGISTRY,
        transport: str = "socket",
        start_timeout_s: float = 900.0,
        request_timeout_s: float = 600.0,
        max_restarts: int = 2,
        python: str | None = None,
        torch_threads: int = 0,
        env: Mapping[str, str] | None = None,
    ) -> RewardProcess:
        """Spawns a reward process and waits for its handshake.

        Args:
          components: component name -> settings (forwarded as the server's ``--config``).
          device: torch device in the reward process (``cuda:0`` = its first visible GPU).
          cuda_visible_devices: the child's ``CUDA_VISIBLE_DEVICES`` (``"inherit"`` keeps the
            trainer's; ``""`` hides every GPU).
          registry: ``"module:attr"`` of the component factory dict (tests pass fakes).
          transport: ``"socket"`` (images inside the frames) or ``"shm"`` (shared memory).
          start_timeout_s: seconds to build the models and answer the handshake.
          request_timeout_s: seconds without a reply before the process counts as hung.
          max_restarts: restarts tried for one request before giving up.
          python: interpreter for the child (default: this one).
          torch_threads: torch intra-op threads in the child (0 = torch's default).
          env: extra environment variables for the child.

        Returns:
          A connected client (its worker thread running).

        Raises:
          RewardProcessError: the process did not come up (the message has its log's tail).
        """
        workdir = tempfile.mkdtemp(prefix="irpo_rewards_")  # 0700: only this user can connect
        config_path = os.path.join(workdir, "components.json")
        pathlib.Path(config_path).write_text(json.dumps(_plain(components), allow_nan=False))
        address = f"unix:{os.path.join(workdir, 'rewards.sock')}"
        argv = [
            python or sys.executable, "-m", "torch_bridge.reward_server",
            "--address", address, "--config", config_path, "--device", device,
            "--components", registry, "--ready_file", os.path.join(workdir, "ready"),
            "--parent_pid", str(os.getpid()), "--parent_workdir", workdir, "--once",
            "--torch_threads", str(int(torch_threads)),
        ]  # fmt: skip
        child_env = dict(os.environ)
        child_env.update(env or {})
        if cuda_visible_devices != "inherit":
            # In the environment from exec on, and again by the flag before torch is imported.
            child_env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
            argv += ["--cuda_visible_devices", cuda_visible_devices]
        path = child_env.get("PYTHONPATH")
        child_env["PYTHONPATH"] = str(_SOURCE_ROOT) + (os.pathsep + path if path else "")
        launch = {
            "argv": argv,
            "env": child_env,
            "workdir": workdir,
            "ready_file": os.path.join(workdir, "ready"),
            "log_path": os.path.join(workdir, "server.log"),
        }
        client = cls(
            address=address, launch=launch, transport=transport, start_timeout_s=start_timeout_s,
            request_timeout_s=request_timeout_s, max_restarts=max_restarts,
        )  # fmt: skip
        client._open()
        return client

    @classmethod
    def connect(
        cls,
        address: str,
        *,
        transport: str = "socket",
        connect_timeout_s: float = 60.0,
        request_timeout_s: float = 600.0,
        max_restarts: int = 2,
    ) -> RewardProcess:
        """Connects to a reward server started by hand.

        Such a server is not ours to restart: on a failure the client reconnects (up to
        ``max_restarts`` times per request, e.g. after a supervisor restarted the server) and
        otherwise raises. :meth:`close` disconnects without stopping the server
        (:meth:`shutdown_server` stops it).

        Args:
          address: ``unix:/path`` or ``tcp:127.0.0.1:PORT``.
          transport: ``"socket"`` or ``"shm"``.
          connect_timeout_s: seconds for connecting and the handshake.
          request_timeout_s: seconds without a reply before the connection counts as failed.
          max_restarts: reconnections tried for one request.

        Returns:
          A connected client.
        """
        wire.parse_address(address)  # fail early on a bad form or a non-loopback host
        client = cls(
            address=address, launch=None, transport=transport, start_timeout_s=connect_timeout_s,
            request_timeout_s=request_timeout_s, max_restarts=max_restarts,
        )  # fmt: skip
        client._open()
        return client

    @classmethod
    def from_config(cls, cfg: Any) -> RewardProcess:
        """Starts or connects as the reward config's ``bridge`` section says.

        Args:
          cfg: the reward config (``irpo_jax.rewards.compose.default_reward_config``).

        Returns:
          A connected client serving the config's active remote components.
        """
        b = cfg.bridge
        if b.address:
            return cls.connect(
                b.address, transport=b.transport, connect_timeout_s=b.start_timeout_s,
                request_timeout_s=b.request_timeout_s, max_restarts=b.max_restarts,
            )  # fmt: skip
        return cls.start(
            bridge_components_config(cfg), device=b.device,
            cuda_visible_devices=b.cuda_visible_devices, registry=b.registry, transport=b.transport,
            start_timeout_s=b.start_timeout_s, request_timeout_s=b.request_timeout_s,
            max_restarts=b.max_restarts, python=b.python or None, torch_threads=b.torch_threads,
        )  # fmt: skip

    def _open(self) -> None:
        try:
            self._bring_up()
        except _Fatal as e:
            self._teardown()
            raise RewardProcessError(str(e)) from None
        except (OSError, wire.ProtocolError) as e:
            message = self._describe(e)
            self._teardown()
            raise RewardProcessError(f"the reward process did not come up: {message}") from None
        self._identity = _identity(self.info)
        # A daemon thread: interpreter exit must reach the atexit hook that closes the client.
        self._thread = threading.Thread(target=self._worker, name="reward-client", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    # ------------------------------------------------------------------------------ public API

    @property
    def pid(self) -> int | None:
        """The current reward process's pid (None when connected to one started by hand)."""
        return None if self._proc is None else self._proc.pid

    @property
    def live_components(self) -> list[str]:
        """Components the reward process serves (from the handshake)."""
        return list(self.info.get("components", {}))

    @property
    def log_path(self) -> str | None:
        """The spawned process's log (None when connected)."""
        return None if self._launch is None else self._launch["log_path"]

    def request(
        self,
        degraded: Any,
        restored: Any,
        clean: Any,
        task_ids: Any = None,
        sample_ids: Any = None,
        *,
        components: Sequence[str] | None = None,
    ) -> concurrent.futures.Future:
        """Queues a batch for scoring and returns at once.

        Args:
          degraded: ``(B, H, W, 3)`` float32 in [0, 1] (numpy or jax).
          restored: ``(B, H, W, 3)`` float32 rollouts in [0, 1].
          clean: ``(B, H, W, 3)`` float32 targets in [0, 1].
          task_ids: optional ``(B,)`` task indices; they travel with the batch but the
            components' contract does not take them (reserved for task-aware judges).
          sample_ids: optional ``(B,)`` ints naming the source image of each rollout (components
            cache ground-truth features by it).
          components: names to run (default: every live component).

        Returns:
          A future of a :class:`~irpo_jax.rewards.wire.RewardResult`; ``future.result(timeout)``.

        Raises:
          ValueError: bad shapes or unknown components.
          RewardProcessError: the client is closed or broken.
        """
        with self._lock:
            if self._broken is not None:
                raise RewardProcessError(f"the reward process is unusable: {self._broken}")
            if self._closed:
                raise RewardProcessError("the reward process client is closed")
        shapes = {tuple(np.shape(a)) for a in (degraded, restored, clean)}
        shape = next(iter(shapes))
        if len(shapes) != 1 or len(shape) != 4 or shape[-1] != 3 or shape[0] < 1:
            raise ValueError(f"degraded/restored/clean must share one (B, H, W, 3) shape, got {shapes}")
        names = None if components is None else list(components)
        if names is not None:
            unknown = [n for n in names if n not in self.live_components]
            if unknown:
                raise ValueError(
                    f"components {unknown} are not live in the reward process; live: "
                    f"{', '.join(self.live_components) or 'none'}"
                )
        arrays: dict[str, Any] = {}
        for key, value in (("degraded", degraded), ("restored", restored), ("clean", clean)):
            if isinstance(value, np.ndarray):
                arrays[key] = _host_float32(value, key).copy()  # the caller may reuse its buffer
            else:
                if hasattr(value, "copy_to_host_async"):
                    value.copy_to_host_async()  # start the device->host copy now, collect later
                arrays[key] = value
        for key, value, dtype in (
            ("task_ids", task_ids, np.int32),
            ("sample_ids", sample_ids, np.int64),
        ):
            if value is not None:
                ids = np.array(value, dtype=dtype).reshape(-1)
                if ids.shape != (shape[0],):
                    raise ValueError(f"{key} must have {shape[0]} entries, got {np.shape(value)}")
                arrays[key] = ids
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put(_Request(next(self._ids), names, arrays, future))
        return future

    def close(self, timeout: float = 30.0) -> None:
        """Stops the client; a spawned process is shut down and its files removed (idempotent).

        Requests still queued fail with :class:`RewardProcessError`; one in flight gets up to
        ``timeout`` seconds to finish.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _LIVE.discard(self)
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():  # stuck on a hung request: pull the plug
                self._kill()
                self._thread.join(10)
        self._fail_queued(RewardProcessError("the reward client was closed before answering"))
        self._teardown()

    def shutdown_server(self) -> None:
        """Asks a server started by hand to exit, then closes (for spawned ones: :meth:`close`)."""
        if self._launch is None:
            self._launch_shutdown = True
        self.close()

    # -------------------------------------------------------------------------- worker thread

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._say_goodbye()
                return
            if not item.future.set_running_or_notify_cancel():
                continue
            try:
                item.future.set_result(self._serve(item))
            except RewardProcessError as e:
                item.future.set_exception(e)
                with self._lock:
                    self._broken = self._broken or e
                self._kill()
                self._fail_queued(RewardProcessError(f"not sent, the reward process is unusable: {e}"))
                return
            except BaseException as e:  # noqa: BLE001 - bad requests go back to the caller
                item.future.set_exception(e)

    def _serve(self, req: _Request) -> wire.RewardResult:
        """Sends one request until answered, restarting the process within the budget."""
        failures: list[str] = []
        while True:
            if self._closed and failures:
                raise RewardProcessError("closed while a request was in flight: " + "; ".join(failures))
            try:
                if self._sock is None:
                    self._bring_up()
                    self._check_identity()
                arrays = {
                    k: v if k.endswith("_ids") else _host_float32(v, k)  # jax -> host here
                    for k, v in req.arrays.items()
                }
                header = {"type": "score", "id": req.rid, "components": req.names}
                self._sock.settimeout(self.request_timeout_s)
                t0 = time.perf_counter()
                wire.send_message(self._sock, header, arrays, arena=self._arena)
                reply = wire.recv_message(self._sock)
                roundtrip = time.perf_counter() - t0
            except _Fatal as e:
                raise RewardProcessError(str(e)) from None
            except (OSError, wire.ProtocolError) as e:  # timeouts, resets, EOF, garbage
                failures.append(f"attempt {len(failures) + 1}: {self._describe(e)}")
                self._drop(kill=True)
                if self._closed or len(failures) > self.max_restarts:
                    raise RewardProcessError(self._give_up_message(req, failures)) from None
                self.restarts += 1
                continue
            kind = reply.header.get("type")
            if kind == "error":
                raise ValueError(f"the reward process rejected request {req.rid}: {reply.header.get('message')}")
            if kind != "scores" or reply.header.get("id") != req.rid:
                failures.append(
                    f"attempt {len(failures) + 1}: unexpected reply {kind!r} for id {reply.header.get('id')}"
                )
                self._drop(kill=True)
                if len(failures) > self.max_restarts:
                    raise RewardProcessError(self._give_up_message(req, failures))
                self.restarts += 1
                continue
            self.requests += 1
            return wire.result_from_reply(reply, roundtrip_s=roundtrip, attempts=len(failures) + 1)

    def _give_up_message(self, req: _Request, failures: list[str]) -> str:
        what = "restart" if self._launch is not None else "reconnection"
        text = (
            f"reward request {req.rid} failed {len(failures)} time(s) and the reward process was "
            f"not restarted again (max_restarts={self.max_restarts}, config bridge.max_restarts): "
            f"{'; '.join(failures)}. Each {what} re-sent the request."
        )
        return text + self._log_tail()

    # ------------------------------------------------------------------------- process control

    def _bring_up(self) -> None:
        """Spawns (or reconnects to) the server and runs the handshake; sets ``self._sock``."""
        deadline = time.monotonic() + self.start_timeout_s
        address = self.address
        if self._launch is not None:
            address = self._spawn(deadline)
        sock = wire.connect(address, timeout=max(deadline - time.monotonic(), 1.0))
        try:
            wire.send_message(sock, {"type": "hello", "client": "irpo_jax.rewards.remote"})
            reply = wire.recv_message(sock)
        except BaseException:
            sock.close()
            raise
        if reply.header.get("type") == "error":
            sock.close()
            raise _Fatal(f"the reward server at {address} refused the handshake: {reply.header.get('message')}")
        if reply.header.get("type") != "hello":
            sock.close()
            raise wire.ProtocolError(f"unexpected handshake reply {reply.header.get('type')!r}")
        self.info = reply.header
        self._sock = sock

    def _spawn(self, deadline: float) -> str:
        launch = self._launch
        ready = pathlib.Path(launch["ready_file"])
        ready.unlink(missing_ok=True)
        with open(launch["log_path"], "ab") as log:
            banner = f"\n==== irpo_jax: starting the reward process ({time.ctime()}) ====\n"
            log.write(banner.encode())
            log.flush()
            self._proc = subprocess.Popen(
                launch["argv"], env=launch["env"], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,  # own group: killpg gets it all
            )  # fmt: skip
        self.pids.append(self._proc.pid)
        while True:
            if ready.exists():
                return ready.read_text().strip()
            code = self._proc.poll()
            if code is not None:
                reason = _EXIT_REASONS.get(code, f"exit code {code}")
                last = self._log_tail().strip().splitlines()[-1:]  # usually the exception line
                message = f"the reward process exited during start-up ({reason}): " + "".join(last)
                message += self._log_tail()
                if code in _EXIT_REASONS:
                    raise _Fatal(message)  # a restart cannot fix missing weights or a taken port
                raise ConnectionError(message)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the reward process did not become ready within {self.start_timeout_s:.0f} s "
                    "(config bridge.start_timeout_s)"
                )
            time.sleep(0.02)

    def _check_identity(self) -> None:
        """A restarted process must serve the same models as the first one."""
        if self._identity is not None and _identity(self.info) != self._identity:
            raise _Fatal(
                "the restarted reward process reports different components or weights than the "
                f"first one: {_identity(self.info)} vs {self._identity}"
            )

    def _describe(self, error: BaseException) -> str:
        if isinstance(error, TimeoutError) and self._sock is not None:
            return f"no reply within {self.request_timeout_s:g} s (hung; config bridge.request_timeout_s)"
        proc = self._proc
        if proc is not None:
            try:
                code = proc.wait(timeout=1.0)  # a crash closes the socket a moment before exit
            except subprocess.TimeoutExpired:
                code = None
            if code is not None:
                how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
                return f"the reward process (pid {proc.pid}) {how}: {type(error).__name__}: {error}"
        return f"{type(error).__name__}: {error}"

    def _drop(self, *, kill: bool) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None
        if kill:
            self._kill()

    def _kill(self) -> None:
        """Terminates the spawned process group: SIGTERM, then SIGKILL after a second."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            if proc is not None:
                proc.wait()
            return
        for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def _say_goodbye(self) -> None:
        """On close: ask the server to exit (if it is ours, or asked to), then disconnect."""
        if self._sock is not None and (self._launch is not None or self._launch_shutdown):
            try:
                self._sock.settimeout(5.0)
                wire.send_message(self._sock, {"type": "shutdown"})
                wire.recv_message(self._sock)
            except (OSError, wire.ProtocolError):
                pass
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    pass
        self._drop(kill=False)

    def _fail_queued(self, error: RewardProcessError) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(error)

    def _teardown(self) -> None:
        self._drop(kill=True)
        if self._arena is not None:
            self._arena.close()
        if self._launch is not None:
            shutil.rmtree(self._launch["workdir"], ignore_errors=True)

    def _log_tail(self) -> str:
        if self._launch is None:
            return ""
        try:
            text = pathlib.Path(self._launch["log_path"]).read_text(errors="replace")
        except OSError:
            return ""
        head = f"\n--- last lines of the reward process log ({self._launch['log_path']}) ---\n"
        return head + text[-_LOG_TAIL_CHARS:]


def _identity(info: Mapping[str, Any]) -> dict[str, Any]:
    """What must not change across restarts: component names, model ids, weight hashes."""
    return {
        name: {k: comp.get(k) for k in ("model_id", "weights")} for name, comp in info.get("components", {}).items()
    }


def _plain(value: Any) -> Any:
    """ConfigDicts/tuples -> JSON-ready dicts/lists."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def bridge_components_config(cfg: Any) -> dict[str, dict[str, Any]]:
    """The reward process's ``--config``: each active remote component -> ``cfg.models[name]``."""
    from irpo_jax.rewards.compose import remote_components

    models = cfg.get("models") or {}
    return {name: _plain(models.get(name) or {}) for name in remote_components(cfg)}


def open_reward_bridge(cfg: Any) -> RewardBridge | None:
    """The reward backend the config asks for.

    Args:
      cfg: the reward config.

    Returns:
      A :class:`RewardProcess` (``bridge.mode="process"``), a
      ``torch_bridge.reward_server.InProcessRewards`` (``"inprocess"``; imports torch now), or
      None (``"off"``, or no active remote component).
    """
    mode = cfg.bridge.mode
    if mode not in ("process", "inprocess", "off"):
        raise ValueError(f"bridge.mode={mode!r}; choose 'process', 'inprocess' or 'off'")
    components = bridge_components_config(cfg)
    if mode == "off" or not components:
        return None
    if mode == "process":
        return RewardProcess.from_config(cfg)
    from torch_bridge.reward_server import InProcessRewards  # torch only when selected

    return InProcessRewards(
        components, device=cfg.bridge.device, registry=cfg.bridge.registry,
        torch_threads=cfg.bridge.torch_threads,
    )  # fmt: skip
