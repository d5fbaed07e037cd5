"""The PyTorch reward process (LPIPS, CLIP, aesthetic, Qwen judge) and its in-process twin.

Run by the trainer (``irpo_jax.rewards.remote.RewardProcess.start``) or by hand::

    python -m torch_bridge.reward_server --address unix:/tmp/irpo_rewards.sock \\
        --config rewards.json --device cuda:0 --cuda_visible_devices 2

``--config`` is a JSON object (inline or a file path) mapping each component to build to its
settings; it is handed to ``torch_bridge.reward_models.build_components(cfg, device)`` (or, with
``--components module:attr``, each entry to ``registry[name](entry, device)``: tests and
benchmarks use that to serve fake components).

Why a separate process: JAX and PyTorch each want to own their GPUs' memory (JAX preallocates
75 %), so the reward models live in their own process whose ``CUDA_VISIBLE_DEVICES`` is set
(``--cuda_visible_devices``) *before* torch is imported: this module imports torch only inside
functions, after :func:`main` has set the environment.

Protocol: :mod:`irpo_jax.rewards.wire` (length-prefixed JSON header + raw float32 arrays, never
pickle, never JPEG), a plain import that pulls in numpy only, not jax: the process needs the
``irpo_jax`` sources on its path (the trainer puts them there) but not its dependencies, so it can
run from a different virtual environment. One connection at a time; each
``score`` request is run through every requested component as one batch, and the reply is a
``(B, n_components)`` float32 table (NaN where a component failed, with its error text) plus
per-component timings.

Into torch without a copy: the received images are numpy views onto the socket payload or the
shared-memory segment, and ``torch.from_numpy`` wraps them as they are. The batch is then moved
to the device and re-laid out NHWC -> NCHW once per request (:func:`nhwc_to_torch` says why), so
components receive contiguous ``(B, 3, H, W)`` float32 tensors in [0, 1], shared by all of them:
never modify them in place. In-process mode (:class:`InProcessRewards`) hands jax arrays over
with ``torch.from_dlpack`` (zero-copy on the same device) and otherwise runs the same code. It
and the trainer's client of this process (``irpo_jax.rewards.remote.RewardProcess``) are the two
implementations of ``irpo_jax.rewards.bridge.RewardBridge``, where their common contract is.

Faults: a component that raises gives NaN for its column and an ``errors`` entry, not a crash;
a component whose weights are missing makes start-up fail (exit code 3) with the factory's
message; a ``--config`` that is not a readable JSON object, or a ``--ready_file`` that cannot be
written, exits 2 with one line before torch is imported. The process exits when its parent dies
(``--parent_pid``, checked twice a second) so a killed trainer leaves no orphan, and on SIGTERM
(exit 0) or a ``shutdown`` message.

The command line follows the package's house rules (:mod:`irpo_jax.cli`: snake_case flags, the
kebab-case spelling still taken with a note; errors in one line; the ready file written whole by
:mod:`irpo_jax.safe_files`); both modules import only the standard library, so this process still
loads without jax.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import itertools
import json
import logging
import os
import pathlib
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

# numpy and the standard library only: irpo_jax and irpo_jax.rewards import nothing at import time
# (their names load on first use), nor do cli and safe_files, so this process never imports jax.
from irpo_jax import cli, safe_files
from irpo_jax.rewards import wire
from irpo_jax.rewards.bridge import RewardBridge

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger("torch_bridge.reward_server")

DEFAULT_REGISTRY = "torch_bridge.reward_models:COMPONENTS"
EXIT_CODES = {"components": 3, "address": 4}  # start-up failures, for the client's message


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


def load_registry(spec: str | Mapping[str, Callable]) -> Mapping[str, Callable]:
    """Resolves ``"module:attr"`` to a dict of component factories (a dict passes through)."""
    if not isinstance(spec, str):
        return spec
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"component registry {spec!r}: expected 'module:attr'")
    registry = getattr(importlib.import_module(module_name), attr)
    if not isinstance(registry, Mapping):
        raise TypeError(f"component registry {spec!r} is a {type(registry).__name__}, not a dict")
    return registry


def build_components(
    config: Mapping[str, Any],
    device: str,
    registry: str | Mapping[str, Callable] = DEFAULT_REGISTRY,
) -> dict[str, Any]:
    """Builds the configured components.

    Args:
      config: component name -> its settings.
      device: torch device string.
      registry: ``"module:attr"`` of a factory dict, or the dict itself. For the default registry
        the module's own ``build_components`` runs (it shares the CLIP forward between ``clip``
        and ``aesthetic`` and reports missing weights); otherwise each factory is called.

    Returns:
      name -> component (callable with ``info()``).

    Raises:
      ValueError: for a name that is not in the registry (listing the valid ones), or the
        factory's ``RewardModelUnavailable`` for absent weights.
    """
    if registry == DEFAULT_REGISTRY:
        from torch_bridge import reward_models

        return dict(reward_models.build_components(dict(config), device))
    factories = load_registry(registry)
    out = {}
    for name, entry in config.items():
        if name not in factories:
            raise ValueError(f"unknown reward component {name!r}; valid ones: {', '.join(factories)}")
        out[name] = factories[name](dict(entry or {}), device)
    return out


def _json_safe(value: Any) -> Any:
    """Makes an ``info()`` dict strict-JSON safe (non-finite floats and odd types become text)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def component_infos(components: Mapping[str, Any]) -> dict[str, Any]:
    """name -> ``info()`` (or the error text if ``info()`` raised)."""
    out = {}
    for name, comp in components.items():
        try:
            out[name] = _json_safe(comp.info())
        except Exception as e:  # noqa: BLE001 - the handshake must still go out
            out[name] = {"name": name, "info_error": f"{type(e).__name__}: {e}"}
    return out


def nhwc_to_torch(array: Any, device: str) -> torch.Tensor:
    """A float32 NHWC batch -> a contiguous ``(B, 3, H, W)`` tensor on ``device``.

    The array enters torch without a copy: numpy through ``torch.from_numpy``, anything that
    speaks DLPack (jax arrays) through ``torch.from_dlpack``. It is then moved to ``device`` (the
    host-to-GPU copy, when there is one) and re-laid out NHWC -> NCHW once, shared by every
    component. Why not hand over the zero-copy ``permute`` view (torch's ``channels_last``):
    measured here, a per-image mean over such a view was 13x slower than over a contiguous
    tensor (10 ms vs 0.8 ms for 8x3x128x128), ``Tensor.view`` fails on it, and the one copy
    costs ~0.5 ms per array on CPU and next to nothing on a GPU.
    """
    import torch

    if isinstance(array, np.ndarray):
        t = torch.from_numpy(array)
    else:
        t = torch.from_dlpack(array)
    if t.device != torch.device(device):
        t = t.to(device)  # NHWC bytes as they are: one contiguous transfer
    return t.permute(0, 3, 1, 2).contiguous()


def _check_images(degraded: Any, restored: Any, clean: Any) -> int:
    shapes = {tuple(a.shape) for a in (degraded, restored, clean)}
    if len(shapes) != 1:
        raise ValueError(f"degraded, restored and clean must have one shape, got {sorted(shapes)}")
    shape = shapes.pop()
    if len(shape) != 4 or shape[-1] != 3 or shape[0] < 1:
        raise ValueError(f"images must be (B, H, W, 3) with B >= 1, got {shape}")
    for a in (degraded, restored, clean):
        if str(a.dtype) != "float32":
            raise TypeError(f"images must be float32, got {a.dtype}")
    return shape[0]


def score_batch(
    components: Mapping[str, Any],
    names: Sequence[str],
    degraded: torch.Tensor,
    restored: torch.Tensor,
    clean: torch.Tensor,
    sample_ids: list[int] | None,
) -> tuple[np.ndarray, dict[str, float], dict[str, str]]:
    """Runs each named component once over the whole batch.

    Args:
      components: name -> component.
      names: components to run, in the order of the returned columns.
      degraded: ``(B, 3, H, W)`` float32 in [0, 1].
      restored: same.
      clean: same.
      sample_ids: ``B`` ints identifying the source images (lets components cache GT features).

    Returns:
      ``(scores (B, len(names)) float32, seconds per component, error text per failed component)``.
    """
    import torch

    batch = restored.shape[0]
    table = np.full((batch, len(names)), np.nan, np.float32)
    timings, errors = {}, {}
    for j, name in enumerate(names):
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                out = components[name](degraded, restored, clean, sample_ids=sample_ids)
            # .cpu() waits for the device, so the timing includes the component's GPU work.
            scores = torch.as_tensor(out).detach().to("cpu", torch.float32).reshape(-1).numpy()
            if scores.shape != (batch,):
                raise ValueError(f"returned {tuple(out.shape)} scores for a batch of {batch}")
            table[:, j] = scores
        except Exception as e:  # noqa: BLE001 - one component failing must not sink the others
            errors[name] = f"{type(e).__name__}: {e}"
            log.error("component %s failed:\n%s", name, traceback.format_exc())
        timings[name] = time.perf_counter() - t0
    return table, timings, errors


def _runtime_info(device: str) -> dict[str, Any]:
    import torch

    info = {
        "pid": os.getpid(),
        "python": platform.python_version(),
        "numpy_version": np.__version__,
        "torch_version": torch.__version__,
        "device": device,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    if device.startswith("cuda"):
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return info


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class RewardServer:
    """Answers the wire protocol for a set of built components (one connection at a time)."""

    def __init__(self, components: Mapping[str, Any], device: str, registry: str) -> None:
        self.components = dict(components)
        self.device = device
        self.hello = {
            "type": "hello",
            "server": "torch_bridge.reward_server",
            "registry": registry if isinstance(registry, str) else "<dict>",
            "transports": ["socket", "shm"],
            "components": component_infos(self.components),
            **_runtime_info(device),
        }
        self.requests = 0
        self._shm = wire.ShmAttachments()

    def serve(self, listener, *, once: bool = False) -> None:
        """Accepts connections until a ``shutdown`` message (or, with ``once``, one disconnect)."""
        try:
            while True:
                conn, _ = listener.accept()
                with conn:
                    stop = self._serve_connection(conn)
                if stop or once:
                    return
        finally:
            self._shm.close()

    def _serve_connection(self, conn) -> bool:
        """Handles messages on one connection; returns True when asked to shut down.

        A client that goes away mid-exchange (a trainer killed, or one that timed out and
        reconnects) ends its connection only: the server goes on to the next client.
        """
        try:
            return self._handle_messages(conn)
        except OSError as e:  # BrokenPipeError / ConnectionResetError on the reply or the request
            log.warning("client connection lost (%s: %s); waiting for the next one", type(e).__name__, e)
            return False

    def _handle_messages(self, conn) -> bool:
        while True:
            try:
                msg = wire.recv_message(conn, shm=self._shm)
            except wire.PeerClosed:
                return False
            except wire.ProtocolError as e:
                self._send_error(conn, "version" if "version" in str(e) else "request", str(e))
                return False
            kind = msg.header.get("type")
            if kind == "hello":
                wire.send_message(conn, dict(self.hello, uptime_s=time.monotonic() - _T0))
            elif kind == "ping":
                wire.send_message(conn, {"type": "pong", "requests": self.requests})
            elif kind == "shutdown":
                wire.send_message(conn, {"type": "bye"})
                return True
            elif kind == "score":
                try:
                    header, arrays = self._score(msg)
                except _BadRequest as e:
                    self._send_error(conn, "request", str(e), msg.header.get("id"))
                    continue
                del msg  # drop the input views (shared memory) before the next frame
                wire.send_message(conn, header, arrays)
            else:
                self._send_error(conn, "request", f"unknown message type {kind!r}")

    def _send_error(self, conn, kind: str, message: str, request_id: Any = None) -> None:
        try:
            header = {"type": "error", "kind": kind, "message": message, "id": request_id}
            wire.send_message(conn, header)
        except OSError:
            pass

    def _score(self, msg) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        t0 = time.perf_counter()
        header, arrays = msg.header, msg.arrays
        names = header.get("components") or list(self.components)
        unknown = [n for n in names if n not in self.components]
        if unknown:
            raise _BadRequest(
                f"components {unknown} are not live in this reward process; live: "
                f"{', '.join(self.components) or 'none'}"
            )
        try:
            batch = _check_images(arrays["degraded"], arrays["restored"], arrays["clean"])
        except KeyError as e:
            raise _BadRequest(f"score request without the {e} array") from None
        except (TypeError, ValueError) as e:  # TypeError: not float32
            raise _BadRequest(str(e)) from None
        sample_ids = arrays.get("sample_ids")
        if sample_ids is not None:
            if sample_ids.shape != (batch,):
                raise _BadRequest(f"sample_ids must have shape ({batch},), got {sample_ids.shape}")
            sample_ids = sample_ids.tolist()
        images = [nhwc_to_torch(arrays[k], self.device) for k in ("degraded", "restored", "clean")]
        table, timings, errors = score_batch(self.components, names, *images, sample_ids)
        self.requests += 1
        reply = {
            "type": "scores",
            "id": header.get("id"),
            "components": list(names),
            "timings_s": timings,
            "errors": errors,
            "server_s": time.perf_counter() - t0,
        }
        return reply, {"scores": table}


class _BadRequest(ValueError):
    pass


_T0 = time.monotonic()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a dead parent that nobody has reaped yet still answers kill(0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _watch_parent(pid: int, cleanup: Callable[[], None]) -> None:
    """Exits this process as soon as ``pid`` is gone: a killed trainer must leave no orphan."""

    def loop() -> None:
        while _pid_alive(pid):
            time.sleep(0.5)
        log.warning("parent process %d is gone; exiting", pid)
        cleanup()
        os._exit(0)

    threading.Thread(target=loop, name="parent-watchdog", daemon=True).start()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = cli.ArgumentParser(
        prog="python -m torch_bridge.reward_server",
        description=__doc__.split("\n")[0],
        epilog="The kebab-case spellings (--ready-file) are still taken, with a note; they will be removed.",
    )
    p.add_argument("--address", required=True, help="unix:/x.sock or tcp:127.0.0.1:PORT (0: any)")
    p.add_argument("--config", default="{}", help="JSON {component: settings}, inline or a path")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N (N among the visible GPUs)")
    p.add_argument("--cuda_visible_devices", default=None, help="set before torch is imported")
    p.add_argument("--components", default=DEFAULT_REGISTRY, help="module:attr of the factories")
    p.add_argument("--ready_file", default=None, help="written with the bound address once serving")
    p.add_argument("--parent_pid", type=int, default=None, help="exit when this process is gone")
    p.add_argument(
        "--parent_workdir",
        default=None,
        help="the spawning client's private folder (socket, config, log): removed when "
        "the parent is gone, as the client removes it on close",
    )
    p.add_argument("--once", action="store_true", help="exit when the first client disconnects")
    p.add_argument("--torch_threads", type=int, default=0, help="intra-op threads (0: default)")
    return p.parse_args(argv)


class _UsageError(ValueError):
    """A command-line value the server cannot use; reported in one line, exit status 2."""


def _read_config(text: str) -> dict[str, Any]:
    """``--config``: a JSON object inline, or the path of a file holding one."""
    inline = text.strip().startswith(("{", "["))
    where = "--config" if inline else f"--config {text}"
    if not inline:
        try:
            text = pathlib.Path(text).read_text()
        except FileNotFoundError:
            raise _UsageError(
                f"--config {text}: no such file (give a JSON object {{component: settings}}, inline or in a file)"
            ) from None
        except (OSError, UnicodeDecodeError) as e:
            raise _UsageError(f"--config {text}: cannot read it ({e})") from e
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise _UsageError(f"{where} is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise _UsageError(f"{where} must be a JSON object {{component: settings}}, not a {type(config).__name__}")
    return config


def _check_ready_file(path: str) -> None:
    """Refuses a ``--ready_file`` the server could not write once serving (after the models load)."""
    target = pathlib.Path(path).absolute()
    if target.is_dir():
        raise _UsageError(f"--ready_file {path} is a folder; give a file path")
    if not target.parent.is_dir():
        raise _UsageError(f"--ready_file {path}: its folder {target.parent} does not exist or is not a folder")
    try:  # mode bits do not stop root; /proc or a read-only mount still do
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".ready-probe-"):
            pass
    except OSError as e:
        raise _UsageError(f"--ready_file {path}: cannot write in {target.parent} ({e.strerror or e})") from e


def _check_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """Every argument checked before torch is imported or a model loaded; returns the config."""
    try:
        wire.parse_address(args.address)
    except ValueError as e:
        raise _UsageError(f"--address: {e}") from e
    if args.torch_threads < 0:
        raise _UsageError(f"--torch_threads must be >= 0 (0: torch's default), got {args.torch_threads}")
    if args.ready_file:
        _check_ready_file(args.ready_file)
    return _read_config(args.config)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code: 0 after a shutdown message or SIGTERM (143, in one
    line, while torch still loads); 2 for a bad argument, in one line; :data:`EXIT_CODES` for a
    failed start-up; 130 for Ctrl-C."""
    args = _parse_args(argv)
    return cli.main_errors(lambda: _serve(args), (_UsageError,), code=2)


def _serve(args: argparse.Namespace) -> int:
    """Checks the arguments, builds the components and serves until shutdown (or the parent dies)."""
    config = _check_arguments(args)
    cli.setup_logging(logging.INFO, format="%(asctime)s reward_server[%(process)d] %(levelname)s %(message)s")
    # Before torch is imported anywhere in this process: which GPUs it may see.
    if args.cuda_visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.cuda_visible_devices
    import torch

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    listener, address = None, None

    def cleanup() -> None:
        if address and address.startswith("unix:"):
            try:
                os.unlink(address[len("unix:") :])
            except OSError:
                pass

    def orphaned() -> None:  # a killed trainer cannot remove its folder: the server does
        cleanup()
        if args.parent_workdir:
            shutil.rmtree(args.parent_workdir, ignore_errors=True)

    if args.parent_pid is not None:
        _watch_parent(args.parent_pid, orphaned)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # run the finally blocks
    try:
        t0 = time.perf_counter()
        try:
            components = build_components(config, args.device, args.components)
        except Exception:  # noqa: BLE001 - report and exit with a code the client explains
            log.error("could not build the reward components:\n%s", traceback.format_exc())
            return EXIT_CODES["components"]
        log.info("built %s on %s in %.1f s", ", ".join(components) or "no components", args.device,
                 time.perf_counter() - t0)  # fmt: skip
        try:
            listener, address = wire.listen(args.address)
        except OSError as e:
            log.error("cannot listen on %s: %s", args.address, e)
            return EXIT_CODES["address"]
        if args.ready_file:  # whole: the client never reads half a line
            safe_files.atomic_write_text(args.ready_file, address)
        log.info(
            "serving on %s (protocol v%d, torch %s)",
            address, wire.PROTOCOL_VERSION, torch.__version__,
        )  # fmt: skip
        RewardServer(components, args.device, args.components).serve(listener, once=args.once)
        log.info("shutting down")
        return 0
    finally:
        if listener is not None:
            listener.close()
        cleanup()


# --------------------------------------------------------------------------------------------
# In-process mode
# --------------------------------------------------------------------------------------------


class InProcessRewards(RewardBridge):
    """The reward process's API, served inside the calling process (single device, CPU runs).

    The other implementation of ``irpo_jax.rewards.bridge.RewardBridge`` (beside
    ``irpo_jax.rewards.remote.RewardProcess``): ``info``, ``live_components``, ``request(...)`` ->
    future of a ``RewardResult``, ``score(...)``, ``close()``, context manager. Jax arrays enter
    torch through DLPack only (``torch.from_dlpack``; zero-copy on the same device; a sharded
    array is first gathered onto one device); requests run on one background thread, so torch
    scoring overlaps the caller's JAX work (torch releases the GIL in its kernels).

    Args:
      components: component name -> settings (as the server's ``--config``).
      device: torch device for the components.
      registry: ``"module:attr"`` or a dict of factories (default: the real reward models).
      torch_threads: torch intra-op threads (0 leaves torch's default).
    """

    def __init__(
        self,
        components: Mapping[str, Any],
        *,
        device: str = "cpu",
        registry: str | Mapping[str, Callable] = DEFAULT_REGISTRY,
        torch_threads: int = 0,
    ) -> None:
        import torch

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.device = device
        self.components = build_components(components, device, registry)
        self.info = {
            "type": "hello",
            "v": wire.PROTOCOL_VERSION,
            "server": "torch_bridge.reward_server.InProcessRewards",
            "registry": registry if isinstance(registry, str) else "<dict>",
            "transports": ["dlpack"],
            "components": component_infos(self.components),
            **_runtime_info(device),
        }
        self._ids = itertools.count()
        # The thread count is also set on the worker thread itself: OpenMP keeps it per thread,
        # and a new thread otherwise starts with the process default (measured: 2 threads on a
        # busy 2-core machine made a conv 4x slower than the 1 the caller asked for).
        init = (lambda: torch.set_num_threads(torch_threads)) if torch_threads > 0 else None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="rewards", initializer=init
        )
        self._closed = False

    @property
    def live_components(self) -> list[str]:
        """Components built and served (as ``RewardProcess.live_components``)."""
        return list(self.components)

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
        """Scores a batch in the background; see ``RewardProcess.request`` for the arguments."""
        if self._closed:
            raise RuntimeError("InProcessRewards is closed")
        names = list(components) if components is not None else list(self.components)
        unknown = [n for n in names if n not in self.components]
        if unknown:
            raise ValueError(f"components {unknown} are not live; live: {', '.join(self.components)}")
        batch = _check_images(degraded, restored, clean)
        ids = None if sample_ids is None else [int(i) for i in np.asarray(sample_ids).reshape(-1)]
        if ids is not None and len(ids) != batch:
            raise ValueError(f"sample_ids must have {batch} entries, got {len(ids)}")
        # Checked as the process client checks them, then unused: the components' contract does
        # not take them (reserved for task-aware judges).
        if task_ids is not None and np.size(task_ids) != batch:
            raise ValueError(f"task_ids must have {batch} entries, got {np.shape(task_ids)}")
        rid = next(self._ids)
        # Scored later, on another thread: numpy buffers are copied now, as RewardProcess does,
        # so a caller reusing them cannot change the scores (jax arrays are immutable).
        degraded, restored, clean = (
            np.array(a) if isinstance(a, np.ndarray) else a for a in (degraded, restored, clean)
        )
        return self._pool.submit(self._run, rid, names, degraded, restored, clean, ids)

    def _run(self, rid: int, names: list[str], degraded: Any, restored: Any, clean: Any, ids: Any):
        t0 = time.perf_counter()
        images = [nhwc_to_torch(_single_device(a), self.device) for a in (degraded, restored, clean)]
        table, timings, errors = score_batch(self.components, names, *images, ids)
        server_s = time.perf_counter() - t0
        return wire.RewardResult(
            request_id=rid,
            scores={name: table[:, j].copy() for j, name in enumerate(names)},
            timings_s=timings,
            errors=errors,
            server_s=server_s,
            roundtrip_s=server_s,
        )

    def close(self) -> None:
        """Waits for queued requests and releases the worker thread (idempotent)."""
        self._closed = True
        self._pool.shutdown(wait=True)


def _single_device(array: Any) -> Any:
    """DLPack exports only single-device arrays: gather a sharded jax array onto one device."""
    sharding = getattr(array, "sharding", None)
    if sharding is not None and len(sharding.device_set) > 1:
        import jax

        return jax.device_put(array, sorted(sharding.device_set, key=lambda d: d.id)[0])
    return array


if __name__ == "__main__":
    sys.exit(main())
