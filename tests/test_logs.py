"""Structured logs: the JSON and text formats, the set-up both servers use, and the access log
of a real gateway (one line per request with what it turned out to be, never what it carried;
nothing for a healthy request when the access log is off)."""

from __future__ import annotations

import io
import logging
import logging.config
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from gateway import logs
from gateway.config import LoggingConfig, parse_config
from tests.conftest import (
    BEARER,
    KEY_ID,
    SECRET,
    SONNET,
    ClientFactory,
    gateway_settings,
    start_gateway,
)
from tests.servers import ServerThread

PROMPT = "a prompt that must never reach a log line [sim:output_tokens=7]"
MESSAGES = [{"role": "user", "content": [{"text": PROMPT}]}]


def _record(message: str = "hello %s", *args: object, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("gateway.test", logging.WARNING, __file__, 1, message, args, None)
    if fields:
        record.fields = fields
    return record


def test_json_lines_carry_the_fields_at_top_level() -> None:
    line = orjson.loads(logs.JsonFormatter().format(_record("hello %s", "there", tenant="t1")))
    assert line["level"] == "WARNING"
    assert line["logger"] == "gateway.test"
    assert line["message"] == "hello there"
    assert line["tenant"] == "t1"
    assert line["ts"].endswith("Z")


def test_json_lines_hold_a_traceback_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("gateway.test", logging.ERROR, __file__, 1, "failed", (),
                                   sys.exc_info())  # fmt: skip
    text = logs.JsonFormatter().format(record)
    assert "\n" not in text
    assert "ValueError: boom" in orjson.loads(text)["exc"]


def test_text_lines_read_as_key_value_pairs() -> None:
    text = logs.TextFormatter().format(_record("done", status=200, tenant="t1"))
    assert text.endswith(" WARNING gateway.test done status=200 tenant=t1")


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_configure_and_dict_config_set_up_the_same_handler(fmt: str) -> None:
    config = LoggingConfig(level="WARNING", format=fmt)  # type: ignore[arg-type]
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure(config)
        (handler,) = root.handlers
        assert isinstance(handler.formatter, logs.FORMATTERS[fmt])
        assert root.level == logging.WARNING
        logging.config.dictConfig(logs.dict_config(config))
        (handler,) = root.handlers
        assert isinstance(handler.formatter, logs.FORMATTERS[fmt])
        stream = io.StringIO()
        handler.setStream(stream)  # type: ignore[attr-defined]
        logging.getLogger("gateway.test").info("not at WARNING")
        logging.getLogger("gateway.test").warning("at WARNING")
        assert stream.getvalue().count("\n") == 1
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


def _gateway(simulator: ServerThread, access_log: bool) -> ServerThread:
    settings = gateway_settings(simulator.url)
    settings["tenants"]["team-a"]["rpm"] = 2  # the third request in a minute is refused
    settings["queue"] = {"max_wait_s": 0}
    settings["logging"] = {"access_log": access_log}
    return start_gateway(parse_config(settings))


@pytest.fixture
def gateways(simulator: ServerThread) -> Iterator[dict[bool, ServerThread]]:
    both = {on: _gateway(simulator, on) for on in (True, False)}
    yield both
    for server in both.values():
        server.stop()


def _converse(client: Any) -> dict[str, Any]:
    return client.converse(  # type: ignore[no-any-return]
        modelId="claude-sonnet",
        messages=MESSAGES,
        inferenceConfig={"maxTokens": 50},
    )


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = logs.JsonFormatter()
    return [orjson.loads(formatter.format(r)) for r in caplog.records
            if r.name == "gateway.access"]  # fmt: skip


def test_the_access_log_says_what_each_request_turned_out_to_be(
    gateways: dict[bool, ServerThread], make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    client = make_client(gateways[True].url)
    answers = [_converse(client) for _ in range(2)]
    with pytest.raises(client.exceptions.ThrottlingException) as refused:
        _converse(client)
    with pytest.raises(client.exceptions.ValidationException):
        client.converse(modelId="no-such-model", messages=MESSAGES)
    lines = _access_lines(caplog)
    assert len(lines) == 4, lines

    for line, answer in zip(lines[:2], answers, strict=True):
        assert line["request_id"] == answer["ResponseMetadata"]["RequestId"]
        assert line["tenant"] == "team-a"
        assert line["model"] == "claude-sonnet"
        assert line["route"] == f"test/us-east-1/{SONNET}"
        assert line["operation"] == "Converse"
        assert (line["status"], line["outcome"], line["attempts"]) == (200, "success", 1)
        assert line["input_tokens"] == answer["usage"]["inputTokens"]
        assert line["output_tokens"] == answer["usage"]["outputTokens"] == 7
        assert line["queue_ms"] == 0
        assert 0 < line["overhead_ms"] <= line["latency_ms"]
    throttled = lines[2]
    assert throttled["request_id"] == refused.value.response["ResponseMetadata"]["RequestId"]
    assert (throttled["status"], throttled["outcome"]) == (429, "throttled")
    assert throttled["attempts"] == 0
    assert throttled["input_tokens"] is None
    invalid = lines[3]
    assert (invalid["status"], invalid["model"]) == (400, "unknown")  # not the caller's string

    text = "\n".join(orjson.dumps(line).decode() for line in lines)
    for secret in (PROMPT, "must never", BEARER, SECRET, KEY_ID, "no-such-model",
                   "Authorization", "AWS4-HMAC-SHA256"):  # fmt: skip
        assert secret not in text


def test_with_the_access_log_off_a_healthy_request_logs_nothing(
    gateways: dict[bool, ServerThread], make_client: ClientFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    client = make_client(gateways[False].url)
    assert _converse(client)["usage"]["outputTokens"] == 7
    ours = [r for r in caplog.records if r.name.startswith("gateway")]
    assert ours == [], [r.getMessage() for r in ours]
