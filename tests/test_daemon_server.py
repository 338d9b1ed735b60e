"""The real daemon as a subprocess (tiny preset) behind real ZeroMQ sockets.

Two daemons serve this module: `main` on the default ipc endpoint of a private runtime dir (shared by most tests;
the last test stops it with `mot-daemon stop`), and `curve` on tcp://0.0.0.0 with CURVE keys. Both start at once.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest
import zmq

from daemon import protocol as P
from daemon.client import (
    Cancelled,
    DaemonAuthError,
    DaemonClient,
    DaemonUnavailable,
    Overloaded,
    TooLarge,
)
from daemon.endpoints import CurveClientKeys, create_keys, load_client_keys
from daemon.testing import REPO_ROOT, free_tcp_port, spawn_daemon

SOURCES = [
    "void add(const float* a, const float* b, float* c, int n) { for (int i = 0; i < n; ++i) c[i] = a[i] + b[i]; }",
    "double dot(const double* x, const double* y, int n) { double s = 0; for (int i = 0; i < n; i++) s += x[i] * y[i]; return s; }",
    "void relu(float* x, int n) { for (int i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0; }",
    "int count_zero(const int* v, int n) { int c = 0; for (int i = 0; i < n; ++i) if (v[i] == 0) ++c; return c; }",
    "void scale(float* x, float a, int n) { for (int i = 0; i < n; i++) x[i] *= a; }",
]
LONG = 400
# A request that outlives its client's death by far: a silent client's death is seen at the next heartbeat (1 s),
# and 400 tiny-model tokens can finish before it on a fast, idle machine.
UNTIL_KILLED = 3000
MAX_MESSAGE_BYTES = 64 * 1024
MAX_SOURCE_CHARS = 20_000


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    root = tmp_path_factory.mktemp("srv")
    keys = root / "keys"
    create_keys(keys, ["known"])
    stranger_dir = root / "stranger"
    stranger_dir.mkdir()
    zmq.auth.create_certificates(str(stranger_dir), "stranger")
    port = free_tcp_port()
    # --no-verify: one candidate per translation, so that a translation is one row of the batch, as these tests count
    main = spawn_daemon(root / "main", args=["--max-batch-size", "16", "--max-queue", "48", "--max-source-chars",
                                             str(MAX_SOURCE_CHARS), "--max-message-bytes", str(MAX_MESSAGE_BYTES),
                                             "--no-verify"])
    curve = spawn_daemon(root / "curve", endpoint=f"tcp://0.0.0.0:{port}",
                         args=["--curve-dir", str(keys), "--max-batch-size", "4", "--no-verify"])
    curve.endpoint = f"tcp://127.0.0.1:{port}"
    known = load_client_keys(keys / "server.key", keys / "clients" / "known.key_secret")
    stranger_pub, stranger_secret = zmq.auth.load_certificate(str(stranger_dir / "stranger.key_secret"))
    stranger = CurveClientKeys(server_public=known.server_public, public=stranger_pub, secret=stranger_secret)
    try:
        main.wait_ready(300)
        curve.wait_ready(300, curve=known)
        yield SimpleNamespace(main=main, curve=curve, known=known, stranger=stranger, root=root)
    finally:
        for d in (main, curve):
            d.terminate()


@pytest.fixture()
def client(daemons):
    with daemons.main.client(timeout_s=60) as c:
        yield c
        _wait_idle(c)


def _wait_idle(c: DaemonClient, timeout_s: float = 30.0) -> P.StatusResult:
    deadline = time.monotonic() + timeout_s
    while True:
        s = c.status()
        if s.running == 0 and s.queue_depth == 0:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"the daemon did not become idle: {s}")
        time.sleep(0.05)


def _cancel_all(client: DaemonClient, streams) -> None:
    """Cancel concurrently (each cancel waits for the engine's next iteration; 64 in a row would take 64 steps)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(lambda s: client.cancel(s.request_id), streams))
    for s in streams:
        with pytest.raises(Cancelled):
            s.result


def _in_threads(n: int, one, timeout_s: float = 300) -> dict:
    """Run one(i) for i in range(n), each in its own thread; return {i: result}; fail on any exception."""
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = one(i)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    assert not errors, errors[:3]
    assert len(results) == n
    return results


def _run_cli(env, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", "daemon", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------------ basics

def test_status_permissions_and_log_file(daemons, client):
    d = daemons.main
    status = client.status()
    assert status.state == "ready" and status.pid == d.pid and status.preset == "tiny"
    assert status.expert_names == ["tiny-qwen2", "tiny-llama", "tiny-starcoder2"]
    assert status.max_batch_size == 16 and status.max_queue == 48
    assert status.limits["max_message_bytes"] == MAX_MESSAGE_BYTES and status.limits["max_source_tokens"] == 2048
    assert status.device_memory["kind"] == "cpu" and status.device_memory["rss_bytes"] > 0
    runtime = d.home / "run" / "mot-cuda"
    sock = runtime / "daemon.sock"
    assert stat.S_IMODE(os.stat(runtime).st_mode) == 0o700
    assert stat.S_ISSOCK(os.stat(sock).st_mode) and stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    log_file = d.home / "state" / "mot-cuda" / "log" / "daemon.log"
    assert "listening on " + d.endpoint in log_file.read_text()
    out = _run_cli(d.env, "status")
    assert out.returncode == 0 and "ready" in out.stdout and f"pid {d.pid}" in out.stdout


def test_serve_logs_its_runtime_and_refuses_a_switch_it_cannot_read(daemons):
    log_file = daemons.main.home / "state" / "mot-cuda" / "log" / "daemon.log"
    line = next(line for line in log_file.read_text().splitlines() if "runtime (mot_engine/envs.py" in line)
    assert "MOT_CUDA_GRAPHS=1 " in line and "MOT_FUSED_NORMS=1 " in line and "*" not in line.split("): ")[1]
    env = dict(daemons.main.env, MOT_PDL="sometimes")
    out = _run_cli(env, "serve", "--preset", "tiny", "--device", "cpu", "--endpoint", f"tcp://127.0.0.1:{free_tcp_port()}",
                   timeout=60)
    assert out.returncode == 1 and "MOT_PDL='sometimes': expected 1 or 0" in out.stderr


def test_second_instance_on_the_same_endpoint_is_refused(daemons, client):
    d = daemons.main
    out = _run_cli(d.env, "serve", "--preset", "tiny", "--device", "cpu", timeout=60)
    assert out.returncode != 0
    assert f"another mot-daemon (pid {d.pid}) is already serving {d.endpoint}" in out.stderr
    assert client.status().pid == d.pid  # the first one still owns the socket


def test_non_loopback_tcp_without_keys_is_refused(daemons):
    out = _run_cli(daemons.main.env, "serve", "--preset", "tiny", "--endpoint", f"tcp://0.0.0.0:{free_tcp_port()}", timeout=60)
    assert out.returncode != 0
    assert "not a loopback address and no CURVE keys" in out.stderr


def test_status_without_a_daemon_says_so_and_fails(daemons, tmp_path):
    env = dict(daemons.main.env, XDG_RUNTIME_DIR=str(tmp_path))
    t0 = time.monotonic()
    out = _run_cli(env, "status")
    assert out.returncode == 1 and "no mot-daemon answers at ipc://" in out.stderr
    assert time.monotonic() - t0 < 30


# ------------------------------------------------------------------------------------------------ concurrency

def test_fifty_concurrent_clients_each_get_their_own_answer(client):
    expected = {s: client.translate(s, max_new_tokens=8) for s in SOURCES}
    assert len({r.text for r in expected.values()}) == len(SOURCES), "sources must give distinguishable answers"
    start = threading.Barrier(50)

    def one(i: int):
        with DaemonClient(client.endpoint.address, timeout_s=120) as c:
            start.wait()
            return c.translate(SOURCES[i % len(SOURCES)], max_new_tokens=8, request_id=f"req-{i % 3}")

    for i, r in _in_threads(50, one).items():
        want = expected[SOURCES[i % len(SOURCES)]]
        assert r.id == f"req-{i % 3}"  # the same ids on different connections do not collide
        assert (r.text, r.active_experts, r.num_prompt_tokens) == (want.text, want.active_experts, want.num_prompt_tokens), i


def test_requests_arriving_one_by_one_share_slabs_and_get_their_own_answers(tmp_path):
    """The GPU default (continuous batching in slabs, `MOT_SLABS=1` on CPU) through the real daemon: clients that
    start at different times decode in one batch and each gets exactly its answer alone."""
    d = spawn_daemon(tmp_path / "slabs", env_extra={"MOT_SLABS": "1"}, args=["--max-batch-size", "8", "--no-verify"])
    try:
        d.wait_ready(300)
        assert "continuous batching in slabs" in d.log_path.read_text()
        with d.client(timeout_s=120) as c:
            expected = {s: c.translate(s, max_new_tokens=40).text for s in SOURCES}
            steps_before = c.status().steps

        def one(i: int) -> str:
            time.sleep(0.01 * i)  # arrivals spread over several decoding steps, each request overlapping others
            with DaemonClient(d.endpoint, timeout_s=120) as c:
                return c.translate(SOURCES[i % len(SOURCES)], max_new_tokens=40).text

        results = _in_threads(12, one)
        assert {i: results[i] for i in range(12)} == {i: expected[SOURCES[i % len(SOURCES)]] for i in range(12)}
        with d.client(timeout_s=60) as c:
            steps = c.status().steps - steps_before
        assert steps < 12 * 40 / 2, f"{steps} decoding steps for 12 overlapping requests of 40 tokens: no sharing"
    finally:
        d.terminate()


def test_a_full_queue_answers_overloaded_at_once(client):
    capacity = 16 + 48
    streams = [client.stream_translate(SOURCES[i % 5], max_new_tokens=LONG, ignore_eos=True) for i in range(capacity)]
    time.sleep(0.2)
    t0 = time.monotonic()
    with DaemonClient(client.endpoint.address, timeout_s=30) as other:
        with pytest.raises(Overloaded, match=r"the limit is 64 \(16 running \+ 48 queued\)"):
            other.translate(SOURCES[0], max_new_tokens=2)
    assert time.monotonic() - t0 < 2.0
    status = client.status()
    assert status.running + status.queue_depth == 64 and status.running <= 16
    _cancel_all(client, streams)


def test_route_and_status_answer_promptly_during_translations(client):
    streams = [client.stream_translate(SOURCES[i % 5], max_new_tokens=LONG, ignore_eos=True) for i in range(16)]
    for s in streams:
        next(s)  # all decoding
    t0 = time.monotonic()
    status = client.status()
    t_status = time.monotonic() - t0
    t0 = time.monotonic()
    route = client.route(SOURCES[2])
    t_route = time.monotonic() - t0
    assert status.running == 16 and route.expert_names
    assert t_status < 0.5, f"status took {t_status:.3f} s"
    assert t_route < 5.0, f"route took {t_route:.3f} s (it waits at most one decoding step)"
    _cancel_all(client, streams)


def test_cancel_frees_the_slot_within_one_decoding_step(client):
    stream = client.stream_translate(SOURCES[0], max_new_tokens=LONG, ignore_eos=True)
    next(stream), next(stream)
    assert client.cancel(stream.request_id)
    with pytest.raises(Cancelled) as info:
        for _ in stream:
            pass
    assert info.value.details["freed_after_steps"] == 1
    status = client.status()
    assert status.running == 0 and status.queue_depth == 0


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "silent"])
def test_a_client_killed_mid_request_frees_its_work(daemons, client, stream):
    d = daemons.main
    served = client.status().requests_served
    code = f"""
import time
from daemon.client import DaemonClient
c = DaemonClient({d.endpoint!r}, timeout_s=60)
s = c.stream_translate({SOURCES[1]!r}, max_new_tokens={UNTIL_KILLED}, ignore_eos=True, stream={stream})
if {stream}:
    next(s)
else:
    probe = DaemonClient({d.endpoint!r})
    while probe.status().running < 1:
        time.sleep(0.02)
print("running", flush=True)
time.sleep(600)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=d.env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "running"
        assert client.status().running == 1
        proc.kill()
        proc.wait(10)
        t0 = time.monotonic()
        status = _wait_idle(client, timeout_s=15)
        freed_in = time.monotonic() - t0
    finally:
        proc.kill()
    assert status.requests_served == served, "the dead client's request must be dropped, not finished"
    assert freed_in < 5.0


# ------------------------------------------------------------------------------------------------ limits and fuzz

def test_limits_are_typed_errors_over_the_wire(client):
    with pytest.raises(TooLarge, match="limit is 20000 characters") as info:
        client.translate("x" * 20_001)
    assert info.value.details == {"limit": 20_000, "actual": 20_001, "what": "source_chars"}
    # a frame over ZMQ_MAXMSGSIZE would make ZeroMQ drop the connection: the client refuses it itself
    with pytest.raises(TooLarge, match=f"the daemon accepts at most {MAX_MESSAGE_BYTES}"):
        client.translate("x" * MAX_MESSAGE_BYTES)
    assert client.status().state == "ready"
    # a raw frame of another protocol version gets a bad_request naming both versions
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as raw:
        raw.connect(client.endpoint.address)
        raw.send(msgspec.msgpack.encode({"type": "status", "v": 99, "id": "old"}))
        assert raw.poll(10_000)
        reply = P.decode_reply(raw.recv())
    assert isinstance(reply, P.Error) and reply.id == "old" and reply.code == "bad_request"
    assert "version 99" in reply.message and f"version {P.PROTOCOL_VERSION}" in reply.message


def _fuzz_frames(rng: random.Random, n: int):
    """Random bytes, msgpack of wrong shapes/types, wrong versions, lying length headers, multi-frame messages,
    out-of-range options and huge sources. Never a well-formed shutdown (that would rightly stop it)."""

    def junk(depth=0):
        kind = rng.randrange(8 if depth < 3 else 5)
        if kind == 0:
            return rng.randint(-2**63, 2**64 - 1)
        if kind == 1:
            return rng.random() * 10 ** rng.randint(-5, 300)
        if kind == 2:
            return "".join(chr(rng.choice([rng.randint(0, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])) for _ in range(rng.randint(0, 20)))
        if kind == 3:
            return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 30)))
        if kind == 4:
            return rng.choice([None, True, False])
        if kind == 5:
            return [junk(depth + 1) for _ in range(rng.randint(0, 5))]
        return {rng.choice(["type", "v", "id", "source", "options", "target_id", "checkpoint", "x"]): junk(depth + 1)
                for _ in range(rng.randint(0, 5))}

    for i in range(n):
        kind = i % 10
        if kind == 0:
            yield [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))]
        elif kind == 1:
            yield [msgspec.msgpack.encode(junk())]
        elif kind == 2:
            yield [msgspec.msgpack.encode({"type": rng.choice(P.REQUEST_TYPES[:-1]), "v": rng.choice([0, 2, -1, "1", None, 1.0]), "id": "f"})]
        elif kind == 3:
            fields = {"type": rng.choice(["translate", "route", "cancel", "reload", "status"]), "v": P.PROTOCOL_VERSION, "id": junk()}
            fields.update({k: junk() for k in rng.sample(["source", "options", "target_id", "checkpoint"], rng.randint(0, 3))})
            yield [msgspec.msgpack.encode(fields)]
        elif kind == 4:
            opts = {k: junk() for k in rng.sample(["mode", "max_new_tokens", "temperature", "top_p", "seed", "timeout_s", "stream"], 3)}
            yield [msgspec.msgpack.encode({"type": "translate", "v": P.PROTOCOL_VERSION, "id": f"t{i}", "source": "int f();", "options": opts})]
        elif kind == 5:  # lying length headers: a map/array/str/bin claiming up to 4 GiB
            yield [rng.choice([b"\xdf", b"\xdd", b"\xdb", b"\xc6"]) + rng.getrandbits(32).to_bytes(4, "big") + b"\x00" * rng.randint(0, 8)]
        elif kind == 6:
            yield [msgspec.msgpack.encode({"type": "status", "v": P.PROTOCOL_VERSION, "id": "m"})] * rng.randint(2, 4)
        elif kind == 7:
            yield [b""]
        elif kind == 8:
            yield [msgspec.msgpack.encode({"type": "translate", "v": P.PROTOCOL_VERSION, "id": f"big{i}", "source": "x" * rng.randint(1, 30_000),
                                           "options": {"max_new_tokens": rng.choice([1, 70_000, 2**40])}})]
        else:
            yield [msgspec.msgpack.encode({"type": "cancel", "v": P.PROTOCOL_VERSION, "id": "c", "target_id": junk() if rng.random() < 0.5 else "zz"})]


def test_fuzzed_frames_never_crash_or_stall_the_daemon_nor_grow_its_memory(daemons, client):
    d = daemons.main
    rng = random.Random(1234)
    codes: dict[str, int] = {}
    sent = 0
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as fuzz, ctx.socket(zmq.DEALER) as big:
        for sock in (fuzz, big):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.connect(d.endpoint)

        def drain():
            while fuzz.poll(0):
                reply = P.decode_reply(fuzz.recv())
                key = reply.code if isinstance(reply, P.Error) else type(reply).__name__
                codes[key] = codes.get(key, 0) + 1

        def round_of(n):
            nonlocal sent
            for frames in _fuzz_frames(rng, n):
                fuzz.send_multipart(frames)
                sent += 1
                drain()
            # over ZMQ_MAXMSGSIZE: ZeroMQ drops that connection (a separate socket, so the fuzz replies survive)
            big.send(b"\x00" * (MAX_MESSAGE_BYTES + 1))
            # the daemon keeps answering well-formed requests from another client throughout
            t0 = time.monotonic()
            assert client.status().state in ("ready", "reloading")  # fuzzed reloads of missing folders are valid
            assert client.route(SOURCES[0]).expert_names
            assert time.monotonic() - t0 < 10

        for _ in range(5):
            round_of(300)  # warm-up: allocator pools, caches
        # Measure only when idle: fuzzed frames that happen to be valid translations hold KV caches while they run.
        _wait_idle(client, timeout_s=120)
        rss_before = d.rss_bytes()
        trace = []  # resident MiB when idle after each round
        for _ in range(20):
            round_of(300)
            _wait_idle(client, timeout_s=120)
            trace.append(d.rss_bytes() / 2**20)
        assert client.translate(SOURCES[3], max_new_tokens=3).num_generated_tokens >= 1
        _wait_idle(client, timeout_s=120)
        deadline = time.monotonic() + 30
        while sum(codes.values()) < sent and time.monotonic() < deadline:
            fuzz.poll(200)
            drain()
        rss_after = d.rss_bytes()
    assert d.proc.poll() is None, d.log_tail()
    assert "internal" not in codes, codes
    # kinds 0-2 and 5-7 of the generator are always malformed: at least 6 frames in 10 get bad_request
    assert codes.get("bad_request", 0) >= 0.6 * sent, codes
    # Bounded, not growing: the allocator may step up once (the first valid fuzzed translation of a new shape) and
    # a single round can spike (a transient huge frame), but a leak raises the floor round after round: the lowest
    # resident size of the last 5 rounds stays within 16 MiB of the lowest of rounds 6-10. The one-off step was
    # measured at 5 to 96 MiB (glibc's arenas, at the first or the last round, varying run to run: a fresh-clone CI
    # run met 96.01 MiB against an earlier cap of 96), so the total cap only stops a gross allocation kept for good
    # (a lying 4 GiB length header honoured, say); the leak check is the floor's trend above.
    shown = [round(x) for x in trace]
    assert min(trace[-5:]) - min(trace[5:10]) < 16, f"resident memory kept growing over the last rounds (MiB): {shown}"
    assert (rss_after - rss_before) / 2**20 < 192, f"resident memory grew too much (MiB, from {rss_before / 2**20:.0f}): {shown}"
    _wait_idle(client)


# ------------------------------------------------------------------------------------------------ CURVE

def test_curve_serves_a_known_key_and_rejects_unknown_ones(daemons):
    d = daemons.curve
    with DaemonClient(d.endpoint, curve=daemons.known, timeout_s=30) as known:
        assert known.status().state == "ready"
        assert known.translate(SOURCES[0], max_new_tokens=2).num_generated_tokens >= 1
    t0 = time.monotonic()
    with DaemonClient(d.endpoint, curve=daemons.stranger, timeout_s=10) as stranger:
        with pytest.raises(DaemonAuthError, match="rejected this client's CURVE key"):
            stranger.status()
    assert time.monotonic() - t0 < 10
    with DaemonClient(d.endpoint, timeout_s=3) as plain:  # no keys at all: no plaintext way in
        with pytest.raises(DaemonUnavailable):
            plain.status()


def test_sigterm_shuts_down_cleanly(daemons):
    d = daemons.curve
    assert d.terminate(30) == 0, d.log_tail()
    assert "SIGTERM received: shutting down" in d.log_tail(60)


def test_stop_command_stops_the_daemon_and_cleans_up(daemons):
    d = daemons.main
    sock = Path(d.endpoint[len("ipc://"):])
    out = _run_cli(d.env, "stop")
    assert out.returncode == 0 and f"(pid {d.pid})" in out.stdout and "stopped" in out.stdout, out.stderr
    assert d.proc.wait(30) == 0, d.log_tail()
    assert not sock.exists()
    out = _run_cli(d.env, "status")
    assert out.returncode == 1 and "no mot-daemon answers" in out.stderr
