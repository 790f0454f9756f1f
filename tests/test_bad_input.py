"""Bad input to the data plane, as raw bytes over a socket, against ``bedrock-gateway serve``
under both servers (``h1``: uvicorn, ``auto``: granian).

Each case is one connection. Its answer must be a Bedrock-shaped 4xx (status, an
``x-amzn-ErrorType``, a JSON ``{"message": ...}``), or for bytes that are not HTTP at all an
answer of the server's HTTP layer or a closed connection, and must come within a bound (the
server's ``request_read_timeout_s`` for slow clients); then a good request is still served. Over
the whole module the worker's RSS stays bounded and the process logs no traceback.

The gateway under test has small limits, so each case is cheap: ``max_body_bytes`` 1 MB and
``request_read_timeout_s`` 1 s.
"""

from __future__ import annotations

import asyncio
import json
import re
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.asgi import SlowBodies
from gateway.config import ServerConfig
from tests.conftest import BEARER, ENVIRON, gateway_settings
from tests.servers import GatewayProcess, ServerThread

MAX_BODY = 1_000_000
READ_TIMEOUT_S = 1.0
SLOW_BOUND_S = READ_TIMEOUT_S + 2.0  # the timeout, a tick of the body reads' timer, slack
FAST_BOUND_S = 2.0
RSS_GROWTH_MB = 60
GOOD_BODY = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5,
                        "messages": [{"role": "user", "content": "hi"}]}).encode()  # fmt: skip


@dataclass
class Served:
    process: GatewayProcess
    mode: str
    log: Path
    rss_kb: list[int] = field(default_factory=list)


def _worker_pid(process: GatewayProcess) -> int:
    """The process serving requests: uvicorn itself, granian's single worker."""
    assert process.proc is not None
    pid = process.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid


def rss_kb(process: GatewayProcess) -> int:
    status = Path(f"/proc/{_worker_pid(process)}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match, status
    return int(match[1])


@pytest.fixture(scope="module", params=["h1", "auto"])
def served(
    request: pytest.FixtureRequest,
    simulator: ServerThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    settings = gateway_settings(simulator.url, http=request.param, max_body_bytes=MAX_BODY,
                                request_read_timeout_s=READ_TIMEOUT_S)  # fmt: skip
    settings["models"]["claude-sonnet"]["routes"][0]["tpm"] = 2_000_000
    log = tmp_path_factory.mktemp("bad-input") / f"{request.param}.log"
    with GatewayProcess(settings, ENVIRON, log_path=str(log)) as process:
        served = Served(process, request.param, log)
        still_serving(served)  # warmed up: the first figure is a serving worker's
        served.rss_kb.append(rss_kb(process))
        yield served


# ---- one exchange over a raw socket ----------------------------------------------------------


@dataclass
class Answer:
    status: int | None
    """None: the connection was closed without an answer."""
    headers: dict[str, str]
    body: bytes
    elapsed: float

    @property
    def bedrock(self) -> bool:
        """Bedrock's error shape: a type header and a JSON body of just a message."""
        if "x-amzn-errortype" not in self.headers:
            return False
        try:
            document = json.loads(self.body)
        except ValueError:
            return False
        return isinstance(document, dict) and set(document) == {"message"}

    def __str__(self) -> str:
        return f"{self.status} {self.headers} {self.body[:300]!r} in {self.elapsed:.2f} s"


def exchange(port: int, parts: list[bytes], *, gap_s: float = 0.0, wait_s: float = 15.0) -> Answer:
    """Send ``parts`` (``gap_s`` apart, stopping early if the server answers or closes), then
    read one response."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        for part in parts:
            if select.select([sock], [], [], gap_s)[0]:
                break  # the server has answered (or closed) already
            try:
                sock.sendall(part)
            except OSError:
                break
        raw = _read_response(sock)
    return _parse(raw, time.monotonic() - started)


def _read_response(sock: socket.socket) -> bytes:
    raw = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return raw
        if not chunk:
            return raw
        raw += chunk
        head, found, rest = raw.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if found and length and len(rest) >= int(length[1]):
            return raw


def _parse(raw: bytes, elapsed: float) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
    if not status:
        return Answer(None, {}, raw, elapsed)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status[1]), headers, body, elapsed)


def post(path: bytes = b"/model/claude-sonnet/invoke", body: bytes = GOOD_BODY, *,
         extra: bytes = b"", length: int | None = None,
         content_type: bytes = b"application/json") -> bytes:  # fmt: skip
    size = len(body) if length is None else length
    return (b"POST " + path + b" HTTP/1.1\r\nHost: gateway\r\n"
            b"Authorization: Bearer " + BEARER.encode() + b"\r\n" + extra +
            b"Content-Type: " + content_type + b"\r\nContent-Length: " + str(size).encode() +
            b"\r\n\r\n" + body)  # fmt: skip


def chunked(*chunks: bytes, path: bytes = b"/model/claude-sonnet/invoke") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: gateway\r\n"
            b"Authorization: Bearer " + BEARER.encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(chunks))  # fmt: skip


def still_serving(served: Served) -> None:
    answer = exchange(served.process.port, [post()])
    assert answer.status == 200, answer


def bedrock_4xx(answer: Answer, status: int, error_type: str) -> None:
    assert answer.status == status, answer
    assert answer.bedrock, answer
    assert answer.headers["x-amzn-errortype"].split(":")[0] == error_type, answer


def refused_by_http_layer(answer: Answer) -> None:
    """Not HTTP the server could parse: its own 4xx, or just a closed connection."""
    assert answer.status is None or 400 <= answer.status < 500, answer


# ---- the cases -------------------------------------------------------------------------------


def big_max(key: bytes, value: bytes) -> bytes:
    return b'{"anthropic_version":"bedrock-2023-05-31","' + key + b'":' + value + (
        b',"messages":[{"role":"user","content":"hi"}]}')  # fmt: skip


VALIDATION = [
    ("invalid UTF-8 in the body", post(body=b'{"messages":[{"content":"\xff\xfe"}]}')),
    ("not JSON", post(body=b"{not json")),
    ("a JSON array", post(body=b"[1, 2]")),
    ("a form body", post(body=b"a=1&b=2", content_type=b"application/x-www-form-urlencoded")),
    ("100k levels of arrays", post(body=b"[" * 100_000 + b"]" * 100_000)),
    ("100k levels of objects", post(body=b'{"a":' * 100_000 + b"1" + b"}" * 100_000)),
    ("max_tokens negative", post(body=big_max(b"max_tokens", b"-5"))),
    ("max_tokens 1e30", post(body=big_max(b"max_tokens", b"1e30"))),
    ("max_tokens past 64 bits", post(body=big_max(b"max_tokens", b"1" + b"0" * 30))),
    ("max_tokens 2**63-1", post(body=big_max(b"max_tokens", b"9223372036854775807"))),
    ("max_tokens a string", post(body=big_max(b"max_tokens", b'"5"'))),
    ("max_tokens nested", post(body=big_max(b"max_tokens", b'{"a":[[[{"b":1}]]]}'))),
    ("maxTokens 2**63-1 (Converse)", post(
        b"/model/claude-sonnet/converse",
        b'{"inferenceConfig":{"maxTokens":9223372036854775807},'
        b'"messages":[{"role":"user","content":[{"text":"hi"}]}]}')),
    ("Content-Length past the limit", post(body=b"{}", length=30_000_000)),
    ("chunk sizes that are not hex (granian)", chunked(b"zz\r\nabc\r\n0\r\n\r\n")),
]  # fmt: skip


@pytest.mark.parametrize(("case", "data"), VALIDATION, ids=[c for c, _ in VALIDATION])
def test_invalid_bodies_are_validation_errors(served: Served, case: str, data: bytes) -> None:
    answer = exchange(served.process.port, [data])
    if case.endswith("(granian)") and served.mode == "h1":
        refused_by_http_layer(answer)  # uvicorn's parser refuses the chunk itself
    else:
        bedrock_4xx(answer, 400, "ValidationException")
    assert answer.elapsed < FAST_BOUND_S, answer
    still_serving(served)


def test_a_body_past_the_limit_is_refused_before_it_is_all_sent(served: Served) -> None:
    """20 MB chunked against a 1 MB limit: answered (and the connection closed) once the limit
    is passed, so the client cannot send it all, and the server never holds it."""
    chunk = b"%x\r\n" % 65536 + b"x" * 65536 + b"\r\n"
    parts = [chunked()] + [chunk] * 320
    answer = exchange(served.process.port, parts)
    bedrock_4xx(answer, 400, "ValidationException")
    assert b"larger than this gateway's limit of 1000000 bytes" in answer.body
    assert answer.headers.get("connection") == "close"
    assert ServerConfig().max_body_bytes == 25_000_000  # the default: Bedrock's own limit
    still_serving(served)


AUTH = [
    ("no credentials", post().replace(b"Authorization: Bearer ", b"X-Nothing: ")),
    ("a bearer key of invalid UTF-8", post().replace(BEARER.encode(), b"\xff\xfe\xfd")),
    ("a garbled SigV4 header", post().replace(b"Bearer " + BEARER.encode(),
                                             b"AWS4-HMAC-SHA256 \xff, SignedHeaders=,")),
]  # fmt: skip


@pytest.mark.parametrize(("case", "data"), AUTH, ids=[c for c, _ in AUTH])
def test_bad_credentials_are_access_denied(served: Served, case: str, data: bytes) -> None:
    answer = exchange(served.process.port, [data])
    bedrock_4xx(answer, 403, "AccessDeniedException")
    still_serving(served)


UNKNOWN = [
    ("an unknown operation", post(b"/model/x/explode")),
    ("no operation", post(b"/model/")),
    ("an operation of UTF-8 bytes", post(b"/model/x/%C3%A9t%C3%A9")),
    ("GET", b"GET /model/claude-sonnet/invoke HTTP/1.1\r\nHost: g\r\n\r\n"),
    ("DELETE", b"DELETE /model/claude-sonnet/converse HTTP/1.1\r\nHost: g\r\n\r\n"),
    ("an unknown path", b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n"
                        b"Content-Length: 0\r\n\r\n"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "data"), UNKNOWN, ids=[c for c, _ in UNKNOWN])
def test_unknown_paths_and_methods_are_unknown_operations(
    served: Served, case: str, data: bytes
) -> None:
    answer = exchange(served.process.port, [data])
    bedrock_4xx(answer, 404, "UnknownOperationException")
    assert b"b'" not in answer.body, answer  # the path as text, not a bytes repr
    still_serving(served)


def test_an_unknown_operation_names_the_path_as_text(served: Served) -> None:
    answer = exchange(served.process.port, [post(b"/model/x/explode")])
    message = json.loads(answer.body)["message"]
    assert message == "No Bedrock Runtime operation at POST /model/x/explode.", message


NOT_HTTP = [
    ("invalid UTF-8 in the path", post(b"/model/\xff\xfe/invoke")),
    ("a control character in a header", post(extra=b"X-Amzn-Bedrock-Trace: a\x01b\r\n")),
    ("garbage", b"\x00\x01\x02 garbage\r\n\r\n"),
    ("a method that is no token", b"P(ST /model/x/invoke HTTP/1.1\r\nHost: g\r\n\r\n"),
    ("a body longer than Content-Length", post(length=10)),
    ("headers of 1 MB", post(extra=b"X-Big: " + b"a" * 1_000_000 + b"\r\n")),
    ("headers of 20 MB", post(extra=b"X-Big: " + b"a" * 20_000_000 + b"\r\n")),
    ("5000 headers", post(extra=b"".join(b"X-H%d: v\r\n" % i for i in range(5000)))),
    ("150 headers", post(extra=b"".join(b"X-H%d: v\r\n" % i for i in range(150)))),
]  # fmt: skip


@pytest.mark.parametrize(("case", "data"), NOT_HTTP, ids=[c for c, _ in NOT_HTTP])
def test_what_is_not_http_is_refused_by_the_http_layer(
    served: Served, case: str, data: bytes
) -> None:
    """The server's own 4xx (or a Bedrock-shaped one) and a closed connection, or just the
    close; never an answer from the application to what follows."""
    answer = exchange(served.process.port, [data])
    refused_by_http_layer(answer)  # a Bedrock-shaped 4xx from uvicorn_h1.py passes too
    assert answer.elapsed < FAST_BOUND_S, answer
    still_serving(served)


SLOW = [
    ("a body shorter than Content-Length", [post(length=len(GOOD_BODY) + 100)], 0.0),
    ("headers and no body", [post(body=b"", length=100)], 0.0),
    ("a chunked body cut short", [chunked(b"10\r\nabc")], 0.0),
    ("a body dribbled", [post()[:-40], *(bytes([b]) for b in post()[-40:])], 0.2),
]  # fmt: skip


@pytest.mark.parametrize(("case", "parts", "gap_s"), SLOW, ids=[c for c, _, _ in SLOW])
def test_a_slow_body_is_a_request_timeout(
    served: Served, case: str, parts: list[bytes], gap_s: float
) -> None:
    answer = exchange(served.process.port, parts, gap_s=gap_s)
    bedrock_4xx(answer, 408, "RequestTimeoutException")
    assert answer.headers.get("connection") == "close", answer
    assert READ_TIMEOUT_S <= answer.elapsed < SLOW_BOUND_S, answer
    still_serving(served)


def test_dribbled_headers_are_cut_off(served: Served) -> None:
    """Slowloris: one byte of the head every 0.2 s. uvicorn (with gateway/uvicorn_h1.py)
    answers 408; granian closes the connection."""
    request = post()
    answer = exchange(served.process.port, [bytes([b]) for b in request[:80]], gap_s=0.2)
    if served.mode == "h1":
        bedrock_4xx(answer, 408, "RequestTimeoutException")
    else:
        refused_by_http_layer(answer)
    assert READ_TIMEOUT_S <= answer.elapsed < SLOW_BOUND_S, answer
    still_serving(served)


def test_a_connection_that_sends_nothing(served: Served) -> None:
    """Under uvicorn a 408 after the timeout; granian's HTTP/1 head timeout starts only at the
    first byte, so it keeps such a connection open (it costs it a socket, no memory to speak of):
    checked here so that a change in granian shows."""
    if served.mode == "auto":
        with socket.create_connection(("127.0.0.1", served.process.port)) as sock:
            assert not select.select([sock], [], [], SLOW_BOUND_S)[0]
            sock.sendall(post())
            assert _parse(_read_response(sock), 0).status == 200
        return
    answer = exchange(served.process.port, [b""])
    bedrock_4xx(answer, 408, "RequestTimeoutException")
    assert READ_TIMEOUT_S <= answer.elapsed < SLOW_BOUND_S, answer


def test_wrong_content_type_with_a_json_body_is_forwarded(served: Served) -> None:
    """InvokeModel passes its content type to Bedrock (which may refuse it); the gateway only
    needs the body to be JSON."""
    answer = exchange(served.process.port, [post(content_type=b"text/plain")])
    assert answer.status == 200, answer


# ---- HTTP/2 (granian) ------------------------------------------------------------------------


class H2:
    """A cleartext HTTP/2 connection (prior knowledge) whose streams the test writes frame by
    frame."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        self.flush()

    def flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def start(self, stream: int, length: int, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.conn.send_headers(stream, [
            (":method", "POST"), (":path", "/model/claude-sonnet/invoke"), (":scheme", "http"),
            (":authority", "gateway"), ("authorization", f"Bearer {BEARER}"),
            ("content-type", "application/json"), ("content-length", str(length)), *extra,
        ])  # fmt: skip
        self.flush()

    def send(self, stream: int, data: bytes, *, end: bool) -> None:
        self.conn.send_data(stream, data, end_stream=end)
        self.flush()

    def answer(self, stream: int) -> Answer:
        """The stream's response (status, headers, body), once it ends or is reset."""
        started, headers, body = time.monotonic(), {}, b""
        while True:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            for event in self.conn.receive_data(data):
                if getattr(event, "stream_id", None) != stream:
                    continue
                if isinstance(event, h2.events.ResponseReceived):
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    self.conn.acknowledge_received_data(len(event.data), stream)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    self.flush()
                    status = int(headers.pop(":status")) if ":status" in headers else None
                    return Answer(status, headers, body, time.monotonic() - started)
            self.flush()

    def good(self, stream: int) -> Answer:
        self.start(stream, len(GOOD_BODY))
        self.send(stream, GOOD_BODY, end=True)
        return self.answer(stream)


def test_http2_a_stalled_body_times_out_its_stream_only(served: Served) -> None:
    if served.mode == "h1":
        pytest.skip("uvicorn serves HTTP/1.1 only")
    client = H2(served.process.port)
    client.start(1, len(GOOD_BODY) + 50)
    client.send(1, GOOD_BODY, end=False)
    answer = client.answer(1)
    bedrock_4xx(answer, 408, "RequestTimeoutException")
    assert "connection" not in answer.headers  # not allowed in HTTP/2
    assert READ_TIMEOUT_S <= answer.elapsed < SLOW_BOUND_S, answer
    assert client.good(3).status == 200  # the connection goes on


def test_http2_headers_past_the_limit_are_refused(served: Served) -> None:
    if served.mode == "h1":
        pytest.skip("uvicorn serves HTTP/1.1 only")
    client = H2(served.process.port)
    client.start(1, len(GOOD_BODY), (("x-big", "a" * 100_000),))
    client.send(1, GOOD_BODY, end=True)
    answer = client.answer(1)
    assert answer.status == 431, answer  # granian's own, for HTTP/2 past server.MAX_HEAD_BYTES
    assert client.good(3).status == 200


# ---- generated bodies ------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=40, derandomize=True, deadline=None, database=None)
@given(operation=st.sampled_from(["invoke", "converse", "count-tokens"]),
       max_tokens=JSON, messages=JSON, extra=st.dictionaries(st.text(max_size=10), JSON,
                                                             max_size=3))  # fmt: skip
def test_generated_bodies_never_fail_the_gateway(
    served: Served, operation: str, max_tokens: object, messages: object, extra: dict[str, object]
) -> None:
    """Any JSON in the fields the gateway reads (max_tokens, maxTokens, messages): a 2xx, or a
    Bedrock-shaped 4xx, never a 5xx."""
    body = {**extra, "max_tokens": max_tokens, "messages": messages,
            "inferenceConfig": {"maxTokens": max_tokens}}  # fmt: skip
    reply = httpx.post(f"{served.process.url}/model/claude-sonnet/{operation}",
                       content=json.dumps(body, allow_nan=True),
                       headers={"authorization": f"Bearer {BEARER}"}, timeout=10)  # fmt: skip
    assert reply.status_code < 500, reply.text
    if reply.status_code >= 400:
        assert reply.headers["x-amzn-errortype"], reply.headers
        assert set(reply.json()) == {"message"}, reply.text


@settings(max_examples=40, derandomize=True, deadline=None, database=None)
@given(path=st.binary(min_size=1, max_size=40))
def test_generated_paths_never_fail_the_gateway(served: Served, path: bytes) -> None:
    """Any bytes after ``/model/``, percent-encoded: a 4xx (Bedrock-shaped), or a 200 for a
    path that happens to name an operation."""
    quoted = "".join(f"%{b:02X}" for b in path).encode()
    answer = exchange(served.process.port, [post(b"/model/" + quoted)])
    assert answer.status is not None, answer
    assert answer.status < 500, answer
    if answer.status >= 400:
        assert answer.bedrock, answer


# ---- over the whole module -------------------------------------------------------------------


def test_rss_and_logs_stay_clean(served: Served) -> None:
    """Last of the module for each server: its worker's RSS has grown by less than
    RSS_GROWTH_MB since the first case, and it logged no traceback."""
    served.rss_kb.append(rss_kb(served.process))
    print(f"{served.mode}: worker RSS {served.rss_kb[0]} kB first, {served.rss_kb[-1]} kB last")
    assert served.rss_kb[-1] - served.rss_kb[0] < RSS_GROWTH_MB * 1024, served.rss_kb
    log = served.log.read_text(errors="replace")
    assert "Traceback" not in log, log
    assert "unhandled error" not in log, log


# ---- the body reads' time limit, alone -------------------------------------------------------


def test_a_body_read_cancelled_by_the_server_stays_cancelled() -> None:
    """Only the limit's own cancellation becomes a RequestTimeout: a server stopping a request
    (a cancel of its own) still cancels it."""

    async def never() -> dict[str, object]:
        await asyncio.Future()
        raise AssertionError("unreachable")

    async def scenario() -> None:
        bodies = SlowBodies(timeout_s=60)
        reading = asyncio.ensure_future(bodies.read(never, 100))
        await asyncio.sleep(0)  # let it start reading
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading

    asyncio.run(scenario())
