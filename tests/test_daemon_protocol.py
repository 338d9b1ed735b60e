"""The daemon's pure parts, no model: wire protocol, endpoint checks and locks, batch-output helpers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import msgspec
import pytest

from daemon import protocol as P
from daemon.batch_files import (
    collect_sources,
    output_is_complete,
    output_paths,
    remove_stale_temp_files,
    top_level_functions,
    write_atomic,
)
from daemon.endpoints import (
    DaemonAlreadyRunning,
    EndpointError,
    EndpointLock,
    check_server_security,
    ensure_private_dir,
    lock_is_held,
    parse_endpoint,
)


# ------------------------------------------------------------------------------------------------ protocol

def test_every_request_and_reply_round_trips():
    messages = [
        P.Translate(id="a", source="int f();", options=P.TranslateOptions(mode="full", max_new_tokens=7, seed=3, timeout_s=2.5)),
        P.Route(id="b", source="x"), P.Status(id="c"), P.Cancel(id="d", target_id="a"), P.Reload(id="e", checkpoint="/ck"),
        P.Shutdown(id="f"),
    ]
    for m in messages:
        assert P.decode_request(P.encode(m)) == m
    replies = [
        P.Partial(id="a", index=0, text="__global__", num_generated_tokens=2),
        P.Checking(id="a", candidates=4, kernels=2),
        P.TranslateResult(id="a", text=" {}", status="kernel", kernel="__global__ void f() {}\n",
                          answer_prefix="__global__ void f()", notes=["a note"], primary_expert=1, primary_expert_name="e1", active_experts=[1, 0],
                          expert_names=["e0", "e1"], routing_probs=[0.4, 0.6], num_prompt_tokens=5,
                          num_generated_tokens=1, finish_reason="eos", timings={"total_s": 0.1, "queue_s": None}),
        P.RouteResult(id="b", primary_expert=0, primary_expert_name="e0", active_experts=[0, 1], expert_names=["e0", "e1"],
                      routing_probs=[0.7, 0.3]),
        P.CancelResult(id="d", target_id="a", found=True), P.ReloadResult(id="e", checkpoint="/ck", took_s=0.2),
        P.ShutdownResult(id="f"), P.Error(id="a", code="too_large", message="m", details={"limit": 3}), P.Heartbeat(id=""),
    ]
    for r in replies:
        assert P.decode_reply(P.encode(r)) == r


def test_candidates_and_their_checks_round_trip():
    """Protocol v3: a translation's candidates and verification, both ways."""
    request = P.Translate(id="a", source="void f(int n, float* y) {}",
                          options=P.TranslateOptions(candidates=3, verify="off", seed=9))
    assert P.decode_request(P.encode(request)) == request
    check = P.Verification(status="mismatch", reason="y[1]: expected 2, got 0 (differs) on input #1 (n=3)",
                           backend="cpu", inputs=1, mismatch="y[1]: expected 2, got 0 (differs)")
    candidates = [
        P.Candidate(index=0, temperature=0.0, top_p=1.0, seed=None, status="kernel", check="mismatch",
                    reason=check.reason, num_generated_tokens=4),
        P.Candidate(index=1, temperature=0.7, top_p=0.95, seed=10, status="no_kernel", check="skipped",
                    reason="no kernel to check: the answer holds no __global__ function"),
    ]
    result = P.TranslateResult(
        id="a", text=" {}", status="kernel", kernel="__global__ void f_kernel(int n, float* y) {}\n", primary_expert=0,
        primary_expert_name="e0", active_experts=[0, 1], expert_names=["e0", "e1"], routing_probs=[0.6, 0.4],
        num_prompt_tokens=5, num_generated_tokens=4, finish_reason="stop", check=check, candidates=candidates,
        candidate=0,
    )
    assert P.decode_reply(P.encode(result)) == result
    assert P.TranslateOptions().candidates == 4 and P.TranslateOptions().verify == "auto"


@pytest.mark.parametrize("options, words", [
    ({"candidates": 0}, "Expected `int` >= 1 - at `$.options.candidates`"),
    ({"candidates": P.CANDIDATES_LIMIT + 1}, f"Expected `int` <= {P.CANDIDATES_LIMIT} - at `$.options.candidates`"),
    ({"candidates": "4"}, "Expected `int`, got `str` - at `$.options.candidates`"),
    ({"verify": "maybe"}, "Invalid enum value 'maybe' - at `$.options.verify`"),
    ({"verify": True}, "at `$.options.verify`"),
])
def test_bad_candidates_and_verify_options_are_refused_naming_the_field(options, words):
    frame = msgspec.msgpack.encode({"type": "translate", "v": P.PROTOCOL_VERSION, "id": "q", "source": "s",
                                    "options": options})
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(frame)
    assert info.value.request_id == "q" and words in str(info.value)


def test_a_check_status_outside_the_verdicts_is_refused():
    frame = P.encode(P.TranslateResult(
        id="a", text="", status="kernel", kernel="k", primary_expert=0, primary_expert_name="e", active_experts=[0],
        expert_names=["e"], routing_probs=[1.0], num_prompt_tokens=1, num_generated_tokens=1, finish_reason="stop",
        check=P.Verification(status="probably_fine")))
    with pytest.raises(P.ProtocolError, match="probably_fine"):
        P.decode_reply(frame)


def test_defaults_are_greedy_full_and_unknown_fields_are_ignored():
    frame = msgspec.msgpack.encode({"type": "translate", "v": P.PROTOCOL_VERSION, "id": "x", "source": "s", "future_field": [1, 2]})
    req = P.decode_request(frame)
    assert req.options == P.TranslateOptions()
    assert (req.options.mode, req.options.temperature, req.options.top_p) == ("full", 0.0, 1.0)


@pytest.mark.parametrize(
    "payload, expect_id, words",
    [
        (b"\xc1\xff garbage", "", "not a msgpack map"),
        (msgspec.msgpack.encode([1, 2, 3]), "", "not a msgpack map"),
        (msgspec.msgpack.encode({"type": "status", "v": P.PROTOCOL_VERSION + 1, "id": "q"}), "q", f"protocol version {P.PROTOCOL_VERSION + 1}"),
        (msgspec.msgpack.encode({"type": "status", "id": "q"}), "q", "protocol version None"),
        (msgspec.msgpack.encode({"type": "status", "v": "1", "id": "q"}), "q", "protocol version '1'"),
        (msgspec.msgpack.encode({"type": "launch", "v": P.PROTOCOL_VERSION, "id": "q"}), "q", "unknown request type 'launch'"),
        (msgspec.msgpack.encode({"type": "translate", "v": P.PROTOCOL_VERSION, "id": "q"}), "q", "missing required field `source`"),
        (msgspec.msgpack.encode({"type": "translate", "v": P.PROTOCOL_VERSION, "id": "q", "source": 5}), "q", "Expected `str`"),
        (msgspec.msgpack.encode({"type": "translate", "v": P.PROTOCOL_VERSION, "id": "q", "source": "s", "options": {"max_new_tokens": "9"}}), "q", "max_new_tokens"),
        (msgspec.msgpack.encode({"type": "translate", "v": P.PROTOCOL_VERSION, "id": "q", "source": "s", "options": {"max_new_tokens": 0}}), "q", ">= 1"),
        (msgspec.msgpack.encode({"type": "translate", "v": P.PROTOCOL_VERSION, "id": "q", "source": "s", "options": {"top_p": 0}}), "q", "top_p"),
        (msgspec.msgpack.encode({"type": "translate", "v": P.PROTOCOL_VERSION, "id": "q", "source": "s", "options": {"temperature": -1}}), "q", "temperature"),
        (msgspec.msgpack.encode({"type": "translate", "v": P.PROTOCOL_VERSION, "id": "q", "source": "s", "options": {"mode": "slow"}}), "q", "mode"),
        (msgspec.msgpack.encode({"type": "status", "v": P.PROTOCOL_VERSION, "id": ""}), "", "id"),
        (msgspec.msgpack.encode({"type": "status", "v": P.PROTOCOL_VERSION, "id": "x" * 500}), "", "id"),
        (msgspec.msgpack.encode({"type": "cancel", "v": P.PROTOCOL_VERSION, "id": "q"}), "q", "target_id"),
    ],
)
def test_malformed_requests_raise_protocol_errors_that_become_bad_request_replies(payload, expect_id, words):
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(payload)
    reply = info.value.to_reply()
    assert reply.code == "bad_request" and reply.id == expect_id
    assert words in reply.message


def test_random_bytes_never_escape_as_other_exceptions():
    import random

    rng = random.Random(7)
    for _ in range(3000):
        frame = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        try:
            P.decode_request(frame)
        except P.ProtocolError:
            pass
    # a msgpack header that claims a huge map/array/string but carries no data
    for frame in (b"\xdf\xff\xff\xff\xff", b"\xdd\x7f\xff\xff\xff", b"\xdb\x7f\xff\xff\xff", b"\x81\xa4type\xdb\xff\xff\xff\xff"):
        with pytest.raises(P.ProtocolError):
            P.decode_request(frame)


# ------------------------------------------------------------------------------------------------ endpoints

def test_parse_endpoints_and_loopback_rules(tmp_path):
    ep = parse_endpoint(f"ipc://{tmp_path}/d.sock")
    assert ep.transport == "ipc" and ep.ipc_path == tmp_path / "d.sock" and ep.is_loopback
    assert ep.lock_path == tmp_path / "d.sock.lock"
    for loop in ("tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://[::1]:5555", "tcp://127.0.0.2:1"):
        assert parse_endpoint(loop).is_loopback, loop
    for remote in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://10.1.2.3:5555", "tcp://eth0:5555", "tcp://example.com:1"):
        ep = parse_endpoint(remote)
        assert not ep.is_loopback, remote
        with pytest.raises(EndpointError, match="not a loopback address and no CURVE keys"):
            check_server_security(ep, curve_configured=False)
        check_server_security(ep, curve_configured=True)
    for bad, words in (("tcp://127.0.0.1", "HOST:PORT"), ("tcp://127.0.0.1:0", "1..65535"), ("tcp://h:x", "not a number"),
                       ("udp://1.2.3.4:5", "unsupported"), ("ipc://@abstract", "abstract"),
                       ("ipc:///" + "x" * 200, "bytes long")):
        with pytest.raises(EndpointError, match=words):
            parse_endpoint(bad)


def test_default_endpoint_lives_in_the_runtime_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MOT_DAEMON_ENDPOINT", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert parse_endpoint(None).ipc_path == tmp_path / "mot-cuda" / "daemon.sock"
    monkeypatch.setenv("MOT_DAEMON_ENDPOINT", "tcp://127.0.0.1:7000")
    assert parse_endpoint(None).address == "tcp://127.0.0.1:7000"


def test_private_dir_is_created_0700_tightened_and_links_refused(tmp_path):
    d = ensure_private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    os.chmod(d, 0o755)
    ensure_private_dir(d)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    (tmp_path / "link").symlink_to(d)
    with pytest.raises(EndpointError, match="real directory"):
        ensure_private_dir(tmp_path / "link")


def test_endpoint_lock_refuses_a_second_holder_even_in_another_process(tmp_path):
    ep = parse_endpoint(f"ipc://{tmp_path}/d.sock")
    with EndpointLock(ep):
        assert lock_is_held(ep)
        with pytest.raises(DaemonAlreadyRunning, match=f"pid {os.getpid()}"):
            EndpointLock(ep).acquire()
        code = (
            "import sys; from daemon.endpoints import EndpointLock, parse_endpoint, DaemonAlreadyRunning\n"
            f"try:\n    EndpointLock(parse_endpoint('ipc://{tmp_path}/d.sock')).acquire()\nexcept DaemonAlreadyRunning as e:\n"
            "    print(e); sys.exit(3)\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 3 and "already serving" in out.stdout
    assert not lock_is_held(ep)
    EndpointLock(ep).acquire().release()


# ------------------------------------------------------------------------------------------------ batch helpers

def test_sources_are_collected_and_outputs_mirror_the_tree(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for name in ("a.cpp", "a.h", "b.c", "sub/c.cxx", "sub/d.hpp", "notes.txt", "k.cu"):
        (src / name).write_text("int f() { return 1; }\n")
    (src / ".hidden").mkdir()
    (src / ".hidden" / "e.cpp").write_text("int g() { return 2; }\n")
    base, files = collect_sources([str(src)])
    assert base == src.resolve()
    rel = sorted(f.relative_to(base).as_posix() for f in files)
    assert rel == ["a.cpp", "a.h", "b.c", "sub/c.cxx", "sub/d.hpp"]
    outs = {f.relative_to(base).as_posix(): o.relative_to(tmp_path / "out").as_posix() for f, o in output_paths(files, base, tmp_path / "out").items()}
    assert outs == {"a.cpp": "a.cpp.cu", "a.h": "a.h.cu", "b.c": "b.cu", "sub/c.cxx": "sub/c.cu", "sub/d.hpp": "sub/d.cu"}
    with pytest.raises(ValueError, match="no such file"):
        collect_sources([str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="not a C/C"):
        collect_sources([str(src / "notes.txt")])


def test_nested_functions_go_with_their_outer_function():
    source = "int outer() {\n  struct L { int m() { return 1; } };\n  return L().m();\n}\nvoid second() {}\n"
    assert [f.name for f in top_level_functions(source)] == ["outer", "second"]


def test_atomic_write_completeness_header_and_stale_temp_cleanup(tmp_path):
    out = tmp_path / "o" / "x.cu"
    header = {"format": 1, "source_sha256": "abc", "complete": True, "failed": 0}
    write_atomic(out, "// mot-cuda: " + json.dumps(header) + "\nbody\n")
    assert output_is_complete(out, "abc") and not output_is_complete(out, "other")
    write_atomic(out, "// mot-cuda: " + json.dumps({**header, "complete": False, "failed": 1}) + "\n")
    assert not output_is_complete(out, "abc")
    out.write_text("// mot-cuda: {truncat")
    assert not output_is_complete(out, "abc")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = out.parent / f".x.cu.abc.mot-tmp-{dead}-x"
    stale.write_text("partial")
    live = out.parent / f".y.cu.abc.mot-tmp-{os.getpid()}-x"
    live.write_text("being written")
    assert remove_stale_temp_files(tmp_path) == [stale]
    assert live.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".x.cu")]
