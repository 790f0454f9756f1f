"""The ``reset`` fault under real uvicorn: the connection closes mid-response, after the call
was admitted and charged, and ``fail_times`` lets a retry of the same body through."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gateway.simulator import SimulatorConfig, create_simulator_app
from gateway.simulator.directives import parse_directives
from gateway.simulator.tokens import MESSAGE_OVERHEAD, count_tokens
from tests.servers import ServerThread
from tests.simulator.test_streaming import claude_body, only_pool

MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    config = SimulatorConfig.model_validate({"latency": {"ttft_ms": 0}})
    with ServerThread(create_simulator_app(config)) as running:
        yield running


def test_a_reset_plain_answer_is_cut_mid_body_and_still_charged(sim: httpx.Client) -> None:
    prompt = "Hi [sim:output_tokens=40] [sim:reset=1]"
    with pytest.raises(httpx.RemoteProtocolError):  # the body ends before its content-length
        sim.post(f"/model/{MODEL}/invoke", content=claude_body(prompt))
    pool = only_pool(sim)
    assert (pool["admitted"], pool["settled"], pool["in_flight"]) == (1, 1, 0)
    assert pool["tokens"] == count_tokens(prompt) + MESSAGE_OVERHEAD + 40


def test_fail_times_resets_only_the_first_tries(sim: httpx.Client) -> None:
    body = claude_body("Hi [sim:output_tokens=5] [sim:reset=1] [sim:fail_times=1]")
    with pytest.raises(httpx.RemoteProtocolError):
        sim.post(f"/model/{MODEL}/invoke", content=body)
    again = sim.post(f"/model/{MODEL}/invoke", content=body)
    assert again.status_code == 200
    assert again.json()["usage"]["output_tokens"] == 5


def test_a_reset_stream_stops_half_way_without_its_end(sim: httpx.Client) -> None:
    prompt = "Hi [sim:output_tokens=40] [sim:reset=1]"
    received: list[bytes] = []
    url = f"/model/{MODEL}/invoke-with-response-stream"
    with sim.stream("POST", url, content=claude_body(prompt)) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):  # the chunked body never ends
            received.extend(response.iter_bytes())
    assert received  # frames went out before the cut
    pool = only_pool(sim)
    assert (pool["settled"], pool["in_flight"]) == (1, 0)
    sent = pool["tokens"] - count_tokens(prompt) - MESSAGE_OVERHEAD
    assert 20 <= sent < 40, sent  # settled on what was sent: half the output


def test_reset_is_a_flag() -> None:
    assert parse_directives(b"[sim:reset=1]", []).reset
    assert not parse_directives(b"[sim:reset=0]", []).reset
