"""EngineCore through the InProcessClient: the daemon's engine logic with the real tiny MoT, no sockets."""

from __future__ import annotations

import json
import time

import pytest

from daemon import protocol as P
from daemon.client import BadRequest, Cancelled, Overloaded, RequestTimeout, TooLarge
from daemon.engine_config import EngineConfig
from daemon.inprocess import InProcessEngine

SOURCES = [
    "void add(const float* a, const float* b, float* c, int n) { for (int i = 0; i < n; ++i) c[i] = a[i] + b[i]; }",
    "double dot(const double* x, const double* y, int n) { double s = 0; for (int i = 0; i < n; i++) s += x[i] * y[i]; return s; }",
    "void relu(float* x, int n) { for (int i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0; }",
]
LONG = 400  # tokens a "long" translation asks for: far more than any test waits for


@pytest.fixture(scope="module")
def hub(tiny_mot):
    """One engine over the session's tiny MoT. Small capacity (2 running + 2 queued) so overload is cheap."""
    # verify=False: one candidate per translation, so that a translation is one row of the batch, as these tests count
    engine = InProcessEngine(EngineConfig(max_batch_size=2, max_queue=2, max_source_chars=50_000, verify=False),
                             model=tiny_mot)
    yield engine
    engine.close()


@pytest.fixture()
def client(hub):
    c = hub.client(timeout_s=120)
    yield c
    c.close()
    _wait_idle(c.hub)


def _wait_idle(hub, timeout_s=30.0):
    with hub.client() as probe:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            s = probe.status()
            if s.running == 0 and s.queue_depth == 0:
                return s
            time.sleep(0.05)
    raise AssertionError(f"the engine did not become idle: {s}")


def test_translate_equals_the_generator_and_streams_its_text(client, tiny_mot):
    from mot_engine import GenerationRequest, Generator

    parts: list[P.Partial] = []
    result = client.translate(SOURCES[0], max_new_tokens=12, on_partial=parts.append)
    expected = Generator(tiny_mot).generate([GenerationRequest(SOURCES[0], max_new_tokens=12)])[0]
    assert result.text == expected.text
    assert result.num_generated_tokens == expected.num_generated_tokens
    assert result.num_prompt_tokens == expected.num_prompt_tokens
    assert result.finish_reason == expected.finish_reason
    assert result.active_experts == expected.routing["active_experts"]
    assert result.primary_expert == expected.routing["primary_expert"]
    assert result.primary_expert_name == tiny_mot.expert_names[result.primary_expert]
    assert result.routing_probs == pytest.approx(expected.routing["all_expert_probs"], abs=1e-6)
    # partials: consecutive, arrive before the result, and concatenate to the final text
    assert [p.index for p in parts] == list(range(len(parts))) and parts
    assert "".join(p.text for p in parts) == result.text
    assert parts[-1].num_generated_tokens <= result.num_generated_tokens
    assert result.timings["daemon_total_s"] >= result.timings["total_s"] > 0


def test_route_matches_the_model(client, tiny_mot):
    for source in SOURCES:
        r = client.route(source)
        info = tiny_mot.get_routing_info(source)
        assert r.active_experts == info["active_experts"] and r.expert_names == tiny_mot.expert_names
        assert r.routing_probs == pytest.approx(info["all_expert_probs"], abs=1e-5)
        assert r.alone_expert is None  # no alone head: fast mode runs the primary


def test_cancel_frees_the_slot_at_the_next_step(client):
    stream = client.stream_translate(SOURCES[1], max_new_tokens=LONG, ignore_eos=True)
    first = [next(stream), next(stream)]
    assert [p.index for p in first] == [0, 1]
    assert client.cancel(stream.request_id) is True
    with pytest.raises(Cancelled) as info:
        stream.result
    assert info.value.details["freed_after_steps"] == 1
    assert 2 <= info.value.details["num_generated_tokens"] < LONG
    status = client.status()  # published before the cancelled reply went out
    assert status.running == 0 and status.queue_depth == 0
    assert client.cancel(stream.request_id) is False  # already gone


def test_timeout_ends_a_request_with_a_timeout_error(client):
    t0 = time.monotonic()
    with pytest.raises(RequestTimeout, match="timeout of 0.5 s") as info:
        client.translate(SOURCES[2], max_new_tokens=LONG, ignore_eos=True, timeout_s=0.5)
    assert time.monotonic() - t0 < 20
    assert info.value.details["timeout_s"] == 0.5


def test_full_queue_answers_overloaded_at_once(client, hub):
    streams = [client.stream_translate(SOURCES[i % 3], max_new_tokens=LONG, ignore_eos=True) for i in range(4)]
    t0 = time.monotonic()
    with pytest.raises(Overloaded, match=r"limit is 4 \(2 running \+ 2 queued\)") as info:
        client.translate(SOURCES[0], max_new_tokens=4)
    assert time.monotonic() - t0 < 1.0, "overloaded must be answered without waiting for the engine"
    assert info.value.details == {"in_flight": 4, "limit": 4}
    status = client.status()
    assert status.running + status.queue_depth == 4
    for s in streams:
        s.cancel()
    for s in streams:
        with pytest.raises(Cancelled):
            s.result
    _wait_idle(hub)
    assert client.translate(SOURCES[0], max_new_tokens=2).num_generated_tokens >= 1


def test_limits_and_bad_requests_are_typed_errors(client, hub):
    with pytest.raises(TooLarge, match="50000 characters") as info:
        client.translate("x" * 50_001)
    assert info.value.details["limit"] == 50_000 and info.value.details["actual"] == 50_001
    words = " ".join(f"v{i}_{i * 7919 % 10007}" for i in range(3000))  # ~40k chars, far more than 2048 tokens
    with pytest.raises(TooLarge, match="limit is 2048 tokens") as info:
        client.translate(words, max_new_tokens=4)
    assert info.value.details["limit"] == 2048 and info.value.details["actual"] > 2048
    with pytest.raises(TooLarge, match="max_new_tokens=5000 is above this daemon's limit of 4096"):
        client.translate(SOURCES[0], max_new_tokens=5000)
    with pytest.raises(BadRequest, match="the source is empty"):
        client.translate("   \n")
    with pytest.raises(TooLarge, match="exceed expert") as info:  # prompt + max_new_tokens beyond a 4096-position context
        client.translate(SOURCES[0], max_new_tokens=4096)
    assert info.value.details["limit"] == 4096 and info.value.details["actual"] > 4096
    # a duplicate id from one client is refused by the engine (the client object itself never sends one);
    # the first request is unharmed. Raw path: submit to the engine, collect replies with a sink client.
    replies = []
    engine = hub.engine
    key = "raw-client"
    with hub._lock:
        hub._clients[key] = type("Sink", (), {"_deliver": staticmethod(replies.append)})()
    try:
        req = P.Translate(id="dup", source=SOURCES[0], options=P.TranslateOptions(max_new_tokens=3))
        assert engine.submit(key, req) is None and engine.submit(key, req) is None
        deadline = time.monotonic() + 60
        while not any(isinstance(r, P.TranslateResult) for r in replies) and time.monotonic() < deadline:
            time.sleep(0.05)
        errors = [r for r in replies if isinstance(r, P.Error)]
        assert len(errors) == 1 and errors[0].code == "bad_request" and "already in flight" in errors[0].message
        assert sum(isinstance(r, P.TranslateResult) for r in replies) == 1
    finally:
        with hub._lock:
            hub._clients.pop(key)


def test_a_client_that_goes_away_frees_its_work(hub):
    c = hub.client()
    stream = c.stream_translate(SOURCES[0], max_new_tokens=LONG, ignore_eos=True)
    next(stream)
    with hub.client() as probe:
        assert probe.status().running == 1
        served = probe.status().requests_served
        c.close()  # what the server does when a socket peer vanishes: engine.client_gone
        status = _wait_idle(hub, timeout_s=10)
        assert status.requests_served == served


def test_reload_swaps_weights_between_steps_and_refuses_a_mismatch(client, tiny_mot, tmp_path):
    import torch
    from safetensors.torch import save_file

    from mot_engine import save_checkpoint
    from mot_engine.model.checkpoint import METADATA, WEIGHTS

    original = save_checkpoint(tiny_mot, tmp_path / "original", preset="tiny")
    changed = save_checkpoint(tiny_mot, tmp_path / "changed", preset="tiny")
    g = torch.Generator().manual_seed(0)
    tensors = {k: (v + torch.randn(v.shape, generator=g)).contiguous() if "router.mlp" in k else v.contiguous()
               for k, v in tiny_mot.trainable_state_dict().items()}
    save_file({k: v.cpu() for k, v in tensors.items()}, str(changed / WEIGHTS))
    before = client.route(SOURCES[0]).routing_probs
    try:
        assert client.reload(changed).checkpoint == str(changed)
        after = client.route(SOURCES[0]).routing_probs
        assert after != pytest.approx(before, abs=1e-4)
        assert client.status().checkpoint == str(changed)
        broken = tmp_path / "broken"
        broken.mkdir()
        meta = json.loads((original / METADATA).read_text())
        meta["mot_config"]["top_k"] = 3
        (broken / METADATA).write_text(json.dumps(meta))
        with pytest.raises(BadRequest, match="top_k"):
            client.reload(broken)
        with pytest.raises(BadRequest, match="is not a MoT checkpoint"):
            client.reload(tmp_path / "nothing-here")
        assert client.route(SOURCES[0]).routing_probs == pytest.approx(after, abs=1e-6), "a refused reload changed weights"
    finally:
        client.reload(original)
        tiny_mot.checkpoint = None
    assert client.route(SOURCES[0]).routing_probs == pytest.approx(before, abs=1e-6)


def test_shutdown_cancels_what_is_in_flight(tiny_mot):
    hub = InProcessEngine(EngineConfig(max_batch_size=2, max_queue=2, verify=False), model=tiny_mot)
    try:
        c = hub.client()
        stream = c.stream_translate(SOURCES[0], max_new_tokens=LONG, ignore_eos=True)
        next(stream)
        hub.client().shutdown()
        with pytest.raises(Cancelled, match="shutting down"):
            stream.result
        assert hub.engine.stopped.wait(10)
        assert hub.engine.shutdown_requested.is_set()
    finally:
        hub.close()
