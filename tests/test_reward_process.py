"""The PyTorch reward process end to end, with fake torch components (issue 4, item 6).

The real server (``python -m torch_bridge.reward_server``) is started as a child process with
``--components tests.test_reward_process:FAKE_COMPONENTS``: fakes that compute a known function,
return NaN for some samples, raise, sleep past the timeout once, or kill their own process with
``os._exit`` (once, or always). Checked: the handshake's content, bit-exact framing (the scores
equal what the same fake computes in this process on the same float32 arrays), NaN passthrough,
a component error, timeout -> restart -> re-sent request answered, crash -> restart -> answered,
an exhausted restart budget -> a clear error, connection to a server started by hand (shared
memory transport, parent watchdog), the in-process mode, and that no process is left behind.

Torch and the client are imported inside the tests: the server imports this module to find the
fakes and should not pay for jax.
"""

import concurrent.futures
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
REGISTRY = "tests.test_reward_process:FAKE_COMPONENTS"


# --------------------------------------------------------------------------------------------
# Fake components (RewardComponent protocol: name, info(), __call__ -> (B,) float32)
# --------------------------------------------------------------------------------------------


class _Fake:
    def __init__(self, name, cfg, device):
        self.name, self.cfg, self.device = name, cfg, device

    def info(self):
        return {
            "name": self.name,
            "model_id": f"fake/{self.name}",
            "weights": {f"{self.name}.bin": hashlib.sha256(self.name.encode()).hexdigest()},
            "device": self.device,
            "dtype": "float32",
        }

    @staticmethod
    def mean_abs(restored, clean):
        # float64 accumulation: the result is the correctly rounded float32 of the exact mean,
        # whatever reduction order torch picks (thread counts differ between the processes).
        return (restored - clean).abs().double().mean(dim=(1, 2, 3)).float()

    def _marker_once(self):
        """True the first time in the test (the marker file survives the process)."""
        marker = pathlib.Path(self.cfg["marker"])
        if marker.exists():
            return False
        marker.write_text(str(os.getpid()))
        return True


class MeanAbs(_Fake):
    def __call__(self, degraded, restored, clean, *, sample_ids=None):
        return self.mean_abs(restored, clean)


class OneMinusMeanAbs(_Fake):
    """Stands in for the real ``lpips`` component (1 - distance) in the config-path test."""

    def __call__(self, degraded, restored, clean, *, sample_ids=None):
        return 1.0 - self.mean_abs(restored, clean)


class DegradedMean(_Fake):
    def __call__(self, degraded, restored, clean, *, sample_ids=None):
        return degraded.double().mean(dim=(1, 2, 3)).float()


class NanOdd(_Fake):
    def __call__(self, degraded, restored, clean, *, sample_ids=None):
        import torch

        out = self.mean_abs(restored, clean)
        odd = torch.tensor([i % 2 == 1 for i in sample_ids])
        return torch.where(odd, torch.full_like(out, float("nan")), out)


class Raises(_Fake):
    def __call__(self, degraded, restored, clean, *, sample_ids=None):
        if sample_ids and 13 in sample_ids:
            raise RuntimeError("unlucky sample 13")
        return self.mean_abs(restored, clean)


class Sleep(_Fake):
    def __call__(self, degraded, restored, clean, *, sample_ids=None):
        if not self.cfg.get("marker") or self._marker_once():
            time.sleep(float(self.cfg["seconds"]))
        return self.mean_abs(restored, clean)


class Crash(_Fake):
    def __call__(self, degraded, restored, clean, *, sample_ids=None):
        if not self.cfg.get("marker") or self._marker_once():
            os._exit(17)  # no cleanup, no reply: as a segfault or the OOM killer would
        return self.mean_abs(restored, clean)


FAKE_COMPONENTS = {
    "mean_abs": lambda cfg, device: MeanAbs("mean_abs", cfg, device),
    "degraded_mean": lambda cfg, device: DegradedMean("degraded_mean", cfg, device),
    "nan_odd": lambda cfg, device: NanOdd("nan_odd", cfg, device),
    "raises": lambda cfg, device: Raises("raises", cfg, device),
    "sleep": lambda cfg, device: Sleep("sleep", cfg, device),
    "crash": lambda cfg, device: Crash("crash", cfg, device),
    "lpips": lambda cfg, device: OneMinusMeanAbs("lpips", cfg, device),
}
BASIC = {"mean_abs": {}, "degraded_mean": {}, "nan_odd": {}, "raises": {}}


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _batch(b=8, h=24, w=20, seed=0):
    """A GRPO-like batch with awkward values: subnormals, -0.0, exact 0/1, values 1 ulp apart."""
    rng = np.random.default_rng(seed)
    clean = rng.random((b, h, w, 3), dtype=np.float32)
    restored = np.clip(clean + 0.03 * rng.standard_normal(clean.shape, dtype=np.float32), 0, 1)
    restored[0, 0, 0] = [np.float32(1e-45), -0.0, 1.0]
    restored[1, 1, 1, 0] = np.nextafter(clean[1, 1, 1, 0], np.float32(2))
    degraded = rng.random((b, h, w, 3), dtype=np.float32)
    return degraded, restored, clean


def _reference(name, degraded, restored, clean, sample_ids):
    import torch

    t = [torch.from_numpy(a).permute(0, 3, 1, 2).contiguous() for a in (degraded, restored, clean)]
    return FAKE_COMPONENTS[name]({}, "cpu")(*t, sample_ids=list(sample_ids)).numpy()


def _alive(pid):
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_gone(pids, within=5.0):
    deadline = time.monotonic() + within
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in pids if _alive(p)], f"reward processes still alive: {pids}"


def _server_children():
    import psutil

    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "torch_bridge.reward_server" in " ".join(child.cmdline()):
                out.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _start(components, **kw):
    from irpo_jax.rewards.remote import RewardProcess

    kw.setdefault("start_timeout_s", 120)
    kw.setdefault("torch_threads", 1)
    return RewardProcess.start(components, registry=REGISTRY, **kw)


@pytest.fixture(scope="module")
def proc():
    client = _start(BASIC, request_timeout_s=60, max_restarts=0)
    yield client
    pids, workdir = list(client.pids), pathlib.Path(client.log_path).parent
    client.close()
    _assert_gone(pids)
    assert not workdir.exists()


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def test_wire_frames_are_lossless_and_checked(tmp_path):
    """Pure numpy: arrays cross a socket pair bit for bit (payload and shared memory); bad
    frames are refused with a ProtocolError. Runs without torch."""
    import socket

    from irpo_jax.rewards import wire

    rng = np.random.default_rng(7)
    images = rng.random((3, 5, 7, 3), dtype=np.float32)
    images.reshape(-1)[:6] = np.array([np.nan, -np.inf, np.inf, -0.0, 1e-45, 3.4e38], np.float32)
    images.reshape(-1).view(np.uint32)[6] = 0x7FA00001  # a NaN with payload bits: must survive
    arrays = {
        "images": images,
        "odd": images[:, ::2].copy()[..., :1],  # odd sizes: padding between arrays
        "ids": np.arange(3, dtype=np.int64),
        "tasks": np.array([4, 0, 2], np.int32),
        "empty": np.zeros((0, 3), np.float32),
        "bytes": np.arange(5, dtype=np.uint8),
    }
    a, b = socket.socketpair()
    arena, attachments = wire.ShmArena(), wire.ShmAttachments()
    try:
        for transport in (None, arena):
            header = {"type": "score", "id": 3, "note": "x"}
            sent = wire.send_message(a, header, arrays, arena=transport)
            msg = wire.recv_message(b, shm=attachments)
            assert msg.header["type"] == "score" and msg.header["id"] == 3 and msg.nbytes == sent
            for name, arr in arrays.items():
                got = msg.arrays[name]
                assert got.dtype == arr.dtype and got.shape == arr.shape and got.flags.writeable
                assert got.tobytes() == arr.tobytes(), name
                if got.size:
                    assert got.ctypes.data % wire.ALIGN == 0
            del msg, got
        with pytest.raises(TypeError, match="float64 cannot travel"):
            wire.send_message(a, {"type": "score"}, {"x": np.zeros(2)})
        a.sendall(b"JUNK" + bytes(12))
        with pytest.raises(wire.ProtocolError, match="not a reward-bridge frame"):
            wire.recv_message(b)
        header = (
            b'{"v":1,"type":"score","arrays":[{"name":"x","dtype":"<f8","shape":[1],'
            b'"offset":0,"nbytes":8,"in":"payload"}]}'
        )
        a.sendall(wire._PREFIX.pack(wire.MAGIC, len(header), 8) + header + bytes(8))
        with pytest.raises(wire.ProtocolError, match="not allowed"):
            wire.recv_message(b)
        a.close()
        with pytest.raises(wire.PeerClosed):
            wire.recv_message(b)
    finally:
        attachments.close()
        arena.close()
        b.close()
    for bad in ("tcp:10.0.0.1:80", "tcp:example.com:80", "http://x", "unix:"):
        with pytest.raises(ValueError):
            wire.parse_address(bad)


@pytest.mark.torch
def test_handshake(proc):
    import torch

    from irpo_jax.rewards import wire

    info = proc.info
    assert info["v"] == wire.PROTOCOL_VERSION and info["type"] == "hello"
    assert info["pid"] == proc.pid and _alive(proc.pid)
    assert info["torch_version"] == torch.__version__ and info["device"] == "cpu"
    assert info["registry"] == REGISTRY and set(info["transports"]) == {"socket", "shm"}
    assert sorted(info["components"]) == sorted(BASIC)
    lpips_like = info["components"]["mean_abs"]
    assert lpips_like["model_id"] == "fake/mean_abs"
    assert len(lpips_like["weights"]["mean_abs.bin"]) == 64
    assert proc.live_components == list(info["components"])


@pytest.mark.torch
def test_round_trip_is_bit_exact(proc):
    degraded, restored, clean = _batch()
    ids = np.arange(100, 108)
    future = proc.request(degraded, restored, clean, task_ids=np.arange(8) % 5, sample_ids=ids,
                          components=["mean_abs", "degraded_mean"])  # fmt: skip
    result = future.result(timeout=60)
    assert list(result.scores) == ["mean_abs", "degraded_mean"] and result.attempts == 1
    for name in result.scores:
        got, want = result.scores[name], _reference(name, degraded, restored, clean, ids)
        assert got.dtype == np.float32 and got.shape == (8,)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert set(result.timings_s) == {"mean_abs", "degraded_mean"} and result.errors == {}
    assert 0 < result.server_s <= result.roundtrip_s


@pytest.mark.torch
def test_nan_passthrough_and_component_errors(proc):
    degraded, restored, clean = _batch(seed=1)
    ids = np.array([10, 11, 12, 13, 14, 15, 16, 17])
    result = proc.score(degraded, restored, clean, sample_ids=ids, timeout=60)  # every component
    assert sorted(result.scores) == sorted(BASIC)
    want = _reference("mean_abs", degraded, restored, clean, ids)
    nan_odd = result.scores["nan_odd"]
    np.testing.assert_array_equal(np.isnan(nan_odd), ids % 2 == 1)
    np.testing.assert_array_equal(nan_odd[::2], want[::2])
    # A component that raises gives NaN for the batch and its message; the others are unaffected.
    assert np.isnan(result.scores["raises"]).all()
    assert "unlucky sample 13" in result.errors["raises"]
    np.testing.assert_array_equal(result.scores["mean_abs"], want)
    assert result.nan_counts() == {"mean_abs": 0, "degraded_mean": 0, "nan_odd": 4, "raises": 8}


@pytest.mark.torch
def test_bad_requests_raise_without_restarting(proc):
    degraded, restored, clean = _batch(b=2)
    with pytest.raises(ValueError, match=r"\['lpips'\] are not live.*mean_abs"):
        proc.request(degraded, restored, clean, components=["lpips"])
    with pytest.raises(ValueError, match="share one"):
        proc.request(degraded, restored[:1], clean)
    with pytest.raises(TypeError, match="float32"):
        proc.score(degraded.astype(np.float64), restored, clean, timeout=60)
    pid = proc.pid
    assert proc.score(degraded, restored, clean, timeout=60).attempts == 1 and proc.pid == pid


@pytest.mark.torch
def test_timeout_and_crash_restart_and_resend(tmp_path):
    """A hung process (timeout) and a crashed one are replaced and the request re-sent."""
    components = {
        "mean_abs": {},
        "sleep": {"seconds": 30, "marker": str(tmp_path / "slept")},
        "crash": {"marker": str(tmp_path / "crashed")},
    }
    client = _start(components, request_timeout_s=2, max_restarts=1)
    try:
        degraded, restored, clean = _batch(b=4)
        ids = np.arange(4)
        want = _reference("mean_abs", degraded, restored, clean, ids)
        first = client.pid

        t0 = time.perf_counter()
        future = client.request(degraded, restored, clean, sample_ids=ids, components=["sleep"])
        assert time.perf_counter() - t0 < 0.5 and not future.done()  # the trainer keeps going
        result = future.result(timeout=60)  # hung 2 s -> killed -> restarted -> re-sent
        np.testing.assert_array_equal(result.scores["sleep"], want)
        assert result.attempts == 2 and client.restarts == 1
        assert client.pid != first and not _alive(first)

        second = client.pid
        names = ["crash", "mean_abs"]
        result = client.score(degraded, restored, clean, sample_ids=ids, components=names)
        np.testing.assert_array_equal(result.scores["crash"], want)  # re-sent after os._exit
        assert result.attempts == 2 and client.restarts == 2 and not _alive(second)
        log = pathlib.Path(client.log_path).read_text()
        assert log.count("starting the reward process") == 3
        pids, workdir = list(client.pids), pathlib.Path(client.log_path).parent
    finally:
        client.close()
    _assert_gone(pids)
    assert len(pids) == 3 and not workdir.exists()


@pytest.mark.torch
def test_restart_budget_exhausted_is_a_clear_error(tmp_path):
    from irpo_jax.rewards.remote import RewardProcessError

    client = _start({"crash": {}, "mean_abs": {}}, request_timeout_s=30, max_restarts=1)
    degraded, restored, clean = _batch(b=2)
    queued_behind = None
    try:
        future = client.request(degraded, restored, clean, components=["crash"])
        queued_behind = client.request(degraded, restored, clean, components=["mean_abs"])
        with pytest.raises(RewardProcessError) as err:
            future.result(timeout=60)
        message = str(err.value)
        assert "failed 2 time(s)" in message and "max_restarts=1" in message
        assert "exited with code 17" in message
        assert "last lines of the reward process log" in message
        # Nothing silently dropped: the queued request fails too, and so does any later one.
        with pytest.raises(RewardProcessError, match="not sent"):
            queued_behind.result(timeout=10)
        with pytest.raises(RewardProcessError, match="unusable"):
            client.request(degraded, restored, clean)
        pids = list(client.pids)
        assert len(pids) == 2
    finally:
        client.close()
    _assert_gone(pids)


@pytest.mark.torch
def test_start_failure_names_the_problem(proc):
    from irpo_jax.rewards.remote import RewardProcessError

    expected = r"could not be built\): ValueError: unknown reward component 'lpips'; valid ones: m"
    with pytest.raises(RewardProcessError, match=expected.replace("lpips", "clip")):
        _start({"clip": {}})
    assert _server_children() == [proc.pid]  # only the module's own server


@pytest.mark.torch
def test_server_started_by_hand_shm_transport_and_parent_watchdog(tmp_path, proc):
    import socket

    from irpo_jax.rewards import wire
    from irpo_jax.rewards.remote import RewardProcess

    address = f"unix:{tmp_path / 'by_hand.sock'}"
    ready = tmp_path / "ready"
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (tmp_path / "parents_folder").mkdir()  # a spawning client's socket, config and log folder
    (tmp_path / "parents_folder" / "server.log").write_text("...")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        [sys.executable, "-m", "torch_bridge.reward_server", "--address", address,
         "--config", json.dumps({"mean_abs": {}, "nan_odd": {},
                                 "sleep": {"seconds": 3, "marker": str(tmp_path / "slept")}}),
         "--components", REGISTRY,
         "--ready_file", str(ready), "--parent_pid", str(parent.pid), "--torch_threads", "1",
         "--parent_workdir", str(tmp_path / "parents_folder")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        # A client from another protocol version is refused with a message, not a crash.
        with wire.connect(address, timeout=30) as sock:
            sock.sendall(wire._PREFIX.pack(wire.MAGIC, 9, 0) + b'{"v":999}')
            reply = wire.recv_message(sock)
        assert reply.header["type"] == "error" and "version mismatch" in reply.header["message"]
        # A client that times out leaves while the server is still scoring its request, and
        # reconnects: the server's reply hits a closed connection; it must serve the new one.
        degraded, restored, clean = _batch(seed=2)
        with RewardProcess.connect(address, request_timeout_s=1.0, max_restarts=1) as client:
            result = client.score(degraded, restored, clean, components=["sleep"], timeout=60)
            assert result.attempts == 2
            want = _reference("mean_abs", degraded, restored, clean, np.arange(8))
            np.testing.assert_array_equal(result.scores["sleep"], want)
        assert server.poll() is None

        degraded, restored, clean = _batch(seed=2)
        ids = np.arange(8)
        with RewardProcess.connect(address, transport="shm", request_timeout_s=60) as client:
            assert client.pid is None and client.info["pid"] == server.pid
            segment = None
            for seed in (2, 3):  # the second request reuses the segment
                degraded, restored, clean = _batch(seed=seed)
                result = client.score(degraded, restored, clean, sample_ids=ids, timeout=60)
                want = _reference("mean_abs", degraded, restored, clean, ids)
                np.testing.assert_array_equal(result.scores["mean_abs"], want)
                np.testing.assert_array_equal(np.isnan(result.scores["nan_odd"]), ids % 2 == 1)
                assert segment in (None, client._arena.name)  # one segment, reused
                segment = client._arena.name
            # Same bits as the socket transport of the spawned process.
            over_socket = proc.score(degraded, restored, clean, sample_ids=ids, timeout=60)
            np.testing.assert_array_equal(result.scores["mean_abs"], over_socket.scores["mean_abs"])
        assert server.poll() is None  # closing a client leaves a hand-started server running
        with RewardProcess.connect(address) as client:  # ... and it takes the next client
            result = client.score(degraded, restored, clean, timeout=60)
            assert result.scores["mean_abs"].shape == (8,)
        assert segment and not os.path.exists(f"/dev/shm/{segment}")  # unlinked by close()

        parent.kill()  # the process named by --parent_pid dies: the server must follow
        parent.wait()
        assert server.wait(timeout=10) == 0
        assert not (tmp_path / "by_hand.sock").exists()
        assert not (tmp_path / "parents_folder").exists()  # the killed client cannot remove it
        with pytest.raises(OSError):
            socket.socket(socket.AF_UNIX).connect(str(tmp_path / "by_hand.sock"))
    finally:
        for p in (parent, server):
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.torch
def test_in_process_mode_gives_the_same_scores(proc):
    import jax.numpy as jnp

    from torch_bridge.reward_server import InProcessRewards

    degraded, restored, clean = _batch(seed=4)
    ids = np.arange(20, 28)
    remote = proc.score(degraded, restored, clean, sample_ids=ids, timeout=60)
    with InProcessRewards(BASIC | {"sleep": {"seconds": 1}}, registry=REGISTRY) as local:
        assert sorted(local.info["components"]) == sorted(BASIC) + ["sleep"]
        # jax arrays enter torch through DLPack.
        jx = [jnp.asarray(a) for a in (degraded, restored, clean)]
        result = local.request(*jx, sample_ids=ids).result(timeout=60)
        # numpy inputs are copied at the request: overwriting them afterwards changes nothing.
        buffers = [a.copy() for a in (degraded, restored, clean)]
        busy = local.request(*buffers, components=["sleep"])  # the scoring thread is busy for 1 s
        future = local.request(*buffers, sample_ids=ids, components=list(BASIC))
        for a in buffers:
            a[...] = 0.5
        from_numpy = future.result(timeout=60)
        busy.result(timeout=60)
    for name in BASIC:
        np.testing.assert_array_equal(result.scores[name], remote.scores[name])
        np.testing.assert_array_equal(from_numpy.scores[name], remote.scores[name])
    assert result.errors == remote.errors == from_numpy.errors == {}


@pytest.mark.torch
@pytest.mark.parametrize("mode", ["process", "inprocess"])
def test_both_bridges_keep_the_reward_bridge_contract(mode):
    """RewardProcess and InProcessRewards do what irpo_jax.rewards.bridge.RewardBridge says, with
    the same checks and the same scores (the fakes' own values, computed here)."""
    from irpo_jax.rewards import wire
    from irpo_jax.rewards.bridge import RewardBridge
    from torch_bridge.reward_server import InProcessRewards

    if mode == "process":
        bridge = _start(BASIC, request_timeout_s=60, max_restarts=0)
    else:
        bridge = InProcessRewards(BASIC, registry=REGISTRY, torch_threads=1)
    with bridge as entered:
        assert entered is bridge and isinstance(bridge, RewardBridge)
        info = bridge.info
        assert info["type"] == "hello" and info["v"] == wire.PROTOCOL_VERSION
        assert sorted(info["components"]) == sorted(BASIC)
        assert info["components"]["mean_abs"]["model_id"] == "fake/mean_abs"
        assert bridge.live_components == list(info["components"])

        degraded, restored, clean = _batch(b=4, seed=7)
        ids, tasks = np.array([11, 12, 13, 14]), np.array([0, 1, 2, 3], np.int32)
        buffers = [a.copy() for a in (degraded, restored, clean)]
        future = bridge.request(*buffers, tasks, ids, components=["degraded_mean", "mean_abs"])
        assert isinstance(future, concurrent.futures.Future)
        for a in buffers:  # numpy inputs are copied at the call
            a[...] = 0.5
        result = future.result(timeout=60)
        assert isinstance(result, wire.RewardResult)
        assert list(result.scores) == ["degraded_mean", "mean_abs"]  # the requested order
        for name, got in result.scores.items():
            assert got.dtype == np.float32 and got.shape == (4,)
            np.testing.assert_array_equal(got, _reference(name, degraded, restored, clean, ids))
        # Every live component by default, in the handshake's order; one that raises gives NaN
        # and an error entry, never a failed future.
        everything = bridge.score(degraded, restored, clean, sample_ids=ids, timeout=60)
        assert list(everything.scores) == bridge.live_components
        assert np.isnan(everything.scores["raises"]).all()
        assert "unlucky sample 13" in everything.errors["raises"]
        assert set(everything.errors) == {"raises"}
        np.testing.assert_array_equal(everything.scores["mean_abs"], result.scores["mean_abs"])

        with pytest.raises(ValueError, match="not live"):
            bridge.request(degraded, restored, clean, components=["lpips"])
        with pytest.raises(ValueError, match="shape"):
            bridge.request(degraded, restored[:2], clean)
        with pytest.raises(ValueError, match="sample_ids must have 4 entries"):
            bridge.request(degraded, restored, clean, sample_ids=ids[:3])
        with pytest.raises(ValueError, match="task_ids must have 4 entries"):
            bridge.request(degraded, restored, clean, task_ids=tasks[:3])
        with pytest.raises(TypeError, match="float32"):
            bridge.request(degraded.astype(np.float64), restored, clean)
    with pytest.raises(RuntimeError):  # closed on leaving the block
        bridge.request(degraded, restored, clean)
    bridge.close()  # a second close is harmless


@pytest.mark.torch
def test_real_registry_lpips_through_the_process(tmp_path, proc):
    """The default registry (torch_bridge.reward_models) behind the process: LPIPS with a random
    AlexNet trunk file scores as the same component called here. (A start-up failure's message
    reaching the caller is checked with a fake above; a second lpips start costs ~5 s here.)"""
    pytest.importorskip("lpips")
    import torch

    from irpo_jax.rewards.remote import RewardProcess
    from torch_bridge import reward_models

    # A random torchvision AlexNet `features.*` state dict (all that lpips reads of the trunk),
    # built directly: constructing torchvision's AlexNet would initialise 61 M parameters.
    torch.manual_seed(0)
    convs = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
    trunk = {}
    for i, (cout, cin, k) in convs.items():
        trunk[f"features.{i}.weight"] = torch.randn(cout, cin, k, k) * (2.0 / (cin * k * k)) ** 0.5
        trunk[f"features.{i}.bias"] = torch.zeros(cout)
    torch.save(trunk, tmp_path / "alexnet_features.pth")
    config = {"lpips": {"trunk_path": str(tmp_path / "alexnet_features.pth")}}
    degraded, restored, clean = _batch(b=2, h=32, w=32, seed=5)
    # Start the process on a thread while the reference is built here (each imports lpips).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started = pool.submit(RewardProcess.start, config, start_timeout_s=120, torch_threads=1)
        local = reward_models.build_components(config, "cpu")["lpips"]
        client = started.result()
    with client:
        info = client.info["components"]["lpips"]
        assert info["model_id"] == "lpips-alex-v0.1" and len(info["weights"]) == 2
        assert info["weights"] == local.info()["weights"]
        result = client.score(degraded, restored, clean, sample_ids=[0, 1], timeout=120)
    t = [torch.from_numpy(a).permute(0, 3, 1, 2).contiguous() for a in (degraded, restored, clean)]
    want = local(*t).numpy()
    # Not bit-exact: the two processes run convolutions with different thread counts.
    np.testing.assert_allclose(result.scores["lpips"], want, rtol=0, atol=1e-6)
    assert result.scores["lpips"].max() <= 1.0


@pytest.mark.torch
def test_config_path_to_the_composite_reward(proc):
    """What the trainer does: open_reward_bridge(cfg) -> request -> compose, for every mode."""
    from irpo_jax.rewards import compose, remote

    cfg = compose.default_reward_config()
    cfg.groups.judge.weight = 0.0  # CPU: no judge
    cfg.groups.gen.components.clip = 0.0
    cfg.groups.gen.components.aesthetic = 0.0
    cfg.bridge.registry = REGISTRY  # "lpips" is a fake here
    cfg.bridge.torch_threads = 1
    assert remote.bridge_components_config(cfg) == {"lpips": {}}
    degraded, restored, clean = _batch(b=4, h=16, w=16, seed=6)
    task_ids = np.array([0, 1, 2, 3], np.int32)
    # Fixed JAX-side scores (their computation is tested in test_reward_compose.py).
    fixed = {"psnr": 30.0, "ssim": 0.8, "task": 0.6}
    jax_scores = {k: np.full(4, v, np.float32) for k, v in fixed.items()}
    totals = {}
    for mode in ("inprocess", "process"):
        cfg.bridge.mode = mode
        bridge = remote.open_reward_bridge(cfg)
        assert bridge.live_components == ["lpips"]
        try:
            future = bridge.request(degraded, restored, clean, task_ids, sample_ids=np.arange(4))
            scores = future.result(timeout=60).scores
        finally:
            bridge.close()
        assert list(scores) == ["lpips"]
        totals[mode], parts = compose.compose(jax_scores, scores, cfg)
        np.testing.assert_array_equal(parts["lpips"], np.clip(scores["lpips"], 0, 1))
    assert np.isfinite(totals["process"]).all()
    np.testing.assert_array_equal(totals["process"], totals["inprocess"])
    cfg.bridge.mode = "off"
    assert remote.open_reward_bridge(cfg) is None
    cfg.bridge.mode = "remote"
    with pytest.raises(ValueError, match="'process', 'inprocess' or 'off'"):
        remote.open_reward_bridge(cfg)


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--config", "/nonexistent/rewards.json"], "--config /nonexistent/rewards.json: no such file"),
        (["--config", "BAD"], "--config BAD is not valid JSON: Expecting"),
        (["--config", '{"mean_abs": {},}'], "--config is not valid JSON: "),
        (["--config", "[1]"], "--config must be a JSON object {component: settings}, not a list"),
        (["--config", "TMP"], "--config TMP: cannot read it"),
        (["--ready_file", "/proc/irpo_test/ready"], "--ready_file /proc/irpo_test/ready: its folder /proc/irpo_test"),
        (["--ready_file", "/proc/irpo_test_ready"], "--ready_file /proc/irpo_test_ready: cannot write in /proc ("),
        (["--ready_file", "TMP"], "--ready_file TMP is a folder"),
        (["--torch_threads", "-2"], "--torch_threads must be >= 0"),
        (["--address", "localhost:5555"], "--address: reward bridge address 'localhost:5555'"),  # the last one wins
    ],
)
def test_server_cli_errors_are_one_line_before_anything_loads(tmp_path, capsys, monkeypatch, flags, needle):
    from torch_bridge import reward_server

    (tmp_path / "bad.json").write_text('{"mean_abs": {"x": 1,}}')
    flags = [f.replace("BAD", str(tmp_path / "bad.json")).replace("TMP", str(tmp_path)) for f in flags]
    needle = needle.replace("BAD", str(tmp_path / "bad.json")).replace("TMP", str(tmp_path))
    monkeypatch.setattr(reward_server, "build_components", lambda *a: pytest.fail("built the components"))
    assert reward_server.main(["--address", f"unix:{tmp_path / 's.sock'}", "--components", REGISTRY, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]  # no socket, no ready file


def test_server_flags_are_snake_case_and_the_kebab_spelling_still_works_with_a_note(capsys):
    """The client passes the snake_case flags; a server started by hand with the old kebab-case
    spelling (scripts written before) gets the same arguments and one note per old flag."""
    from torch_bridge import reward_server

    new = reward_server._parse_args(
        [
            "--address",
            "unix:/x.sock",
            "--cuda_visible_devices",
            "1",
            "--ready_file",
            "r",
            "--parent_pid",
            "7",
            "--parent_workdir",
            "w",
            "--torch_threads",
            "2",
        ]
    )
    assert capsys.readouterr().err == ""
    old = reward_server._parse_args(
        [
            "--address",
            "unix:/x.sock",
            "--cuda-visible-devices",
            "1",
            "--ready-file",
            "r",
            "--parent-pid",
            "7",
            "--parent-workdir",
            "w",
            "--torch-threads=2",
        ]
    )
    assert vars(old) == vars(new)
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 5 and "note: --ready-file is now spelled --ready_file" in notes[1], notes


def test_the_client_spawns_the_server_with_the_snake_case_flags(monkeypatch, tmp_path):
    """Every flag of the command line RewardProcess.start builds is one the server defines."""
    from irpo_jax.rewards import remote
    from torch_bridge import reward_server

    launched = {}
    monkeypatch.setattr(remote.RewardProcess, "_open", lambda self: launched.update(self._launch))
    remote.RewardProcess.start({"mean_abs": {}}, registry=REGISTRY, cuda_visible_devices="0", torch_threads=1)
    try:
        argv = launched["argv"][3:]
        assert argv[0] == "--address" and launched["argv"][1:3] == ["-m", "torch_bridge.reward_server"]
        flags = {a for a in argv if a.startswith("--")}
        assert not [f for f in flags if "-" in f[2:]], flags
        args = reward_server._parse_args(argv)
        assert args.cuda_visible_devices == "0" and args.torch_threads == 1 and args.once
        assert args.parent_pid == os.getpid() and args.ready_file == launched["ready_file"]
    finally:
        shutil.rmtree(launched["workdir"], ignore_errors=True)


@pytest.mark.torch
def test_no_orphans_at_the_end(proc):
    """Every server but the module fixture's is gone (the fixture checks its own at teardown)."""
    assert _server_children() == [proc.pid]
