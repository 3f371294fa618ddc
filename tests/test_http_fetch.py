"""http_fetch: the address policy, and the real fetching path against a server on loopback.

No test sends traffic beyond loopback: the real policy refuses loopback before connecting,
and the tests that do fetch build the fetcher with a policy of their own that allows only
loopback addresses."""

import re
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.testing import ActivityEnvironment

from activities import http_fetch
from activities.builtin_tools import builtin_registry
from activities.http_fetch import (
    MAX_BODY_BYTES,
    MAX_REDIRECTS,
    MAX_TEXT_CHARS,
    HttpFetcher,
    IPAddress,
    check_address,
)
from activities.tool_registry import ToolError
from activities.tools import ToolActivities
from core.db import session_scope
from core.records import insert_task_row
from schemas.agent_task import StartAgentTaskInput, ToolCall, ToolCallInput, ToolPolicy
from schemas.tables import Message
from tests.conftest import MakeAccount, free_port


@dataclass
class Route:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/plain"})
    body: bytes = b""
    endless: bool = False
    stall_seconds: float = 0.0


@dataclass
class SeenRequest:
    path: str
    host: str | None


class LoopbackServer:
    """An HTTP(S) server on 127.0.0.1 serving fixed routes and recording every request."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[SeenRequest] = []
        self.server_names: list[str | None] = []
        self.released = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append(SeenRequest(self.path, self.headers.get("Host")))
                route = owner.routes.get(self.path, Route(404, body=b"not found"))
                self.send_response(route.status)
                for name, value in route.headers.items():
                    self.send_header(name, value)
                if not route.endless:
                    self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                owner.released.wait(route.stall_seconds)
                try:
                    self.wfile.write(route.body)
                    while route.endless and not owner.released.is_set():
                        self.wfile.write(b"x" * 65536)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            tls.sni_callback = self._record_server_name
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def _record_server_name(self, _socket: Any, server_name: str | None, _context: Any) -> None:
        self.server_names.append(server_name)

    def url(self, path: str = "/", host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def __enter__(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as running:
        yield running


def loopback_only(ip: IPAddress) -> str | None:
    """The tests' address policy: loopback is the only place a test may connect to."""
    return None if ip.is_loopback else "not loopback (test policy)"


def only_127_0_0_1(ip: IPAddress) -> str | None:
    return None if ip == ip_address("127.0.0.1") else "not 127.0.0.1 (test policy)"


async def resolve_to_loopback(_host: str, _port: int) -> list[IPAddress]:
    return [ip_address("127.0.0.1")]


@pytest.fixture
def no_system_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any lookup of a name through the system resolver; IP literals still parse."""
    real_getaddrinfo = socket.getaddrinfo

    def literal_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        try:
            ip_address(name)
        except ValueError:
            raise AssertionError(f"{name!r} was looked up a second time") from None
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", literal_only)


# The address policy


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.1.2.3", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.254", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("fc00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("::ffff:10.0.0.1", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not a globally routable"),
        ("100.100.100.200", "cloud metadata"),
        ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64 wrapping 169.254.169.254
    ],
)
def test_check_address_refuses(address: str, reason: str) -> None:
    refusal = check_address(ip_address(address))
    assert refusal is not None and reason in refusal


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "2a00:1450::1"])
def test_check_address_allows_public_addresses(address: str) -> None:
    assert check_address(ip_address(address)) is None


# Refusals with the real policy: nothing reaches the server


async def test_loopback_url_is_refused_before_connecting(server: LoopbackServer) -> None:
    server.routes["/"] = Route(body=b"secret")
    with pytest.raises(ToolError) as refused:
        await HttpFetcher().fetch(server.url())
    assert "127.0.0.1" in str(refused.value) and "loopback" in str(refused.value)
    assert server.requests == []


async def test_localhost_is_refused_after_resolution(server: LoopbackServer) -> None:
    with pytest.raises(ToolError) as refused:
        await HttpFetcher().fetch(server.url(host="localhost"))
    message = str(refused.value)
    assert "localhost resolves to" in message and "loopback" in message
    assert server.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1]:9/",
        "http://[::ffff:127.0.0.1]:9/",
        "http://0.0.0.0:9/",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
async def test_private_literals_are_refused(url: str) -> None:
    with pytest.raises(ToolError, match="refused to fetch"):
        await HttpFetcher().fetch(url)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://example.com/file", "only http and https"),
        ("gopher://example.com/", "only http and https"),
        ("http://user:secret@example.com/", "user name or password"),
        ("http:///no-host", "no host"),
    ],
)
async def test_urls_that_are_not_plain_http_are_refused(url: str, complaint: str) -> None:
    with pytest.raises(ToolError, match=complaint):
        await HttpFetcher().fetch(url)


# The fetching path, with the tests' loopback-only policy


async def test_body_status_and_content_type_come_back(server: LoopbackServer) -> None:
    server.routes["/page"] = Route(
        headers={"Content-Type": "text/html; charset=utf-8"}, body="<p>héllo</p>".encode()
    )
    page = await HttpFetcher(address_policy=loopback_only).fetch(server.url("/page"))

    assert (page.status, page.content_type, page.text) == (
        200,
        "text/html; charset=utf-8",
        "<p>héllo</p>",
    )
    rendered = page.render()
    assert rendered.startswith(f"URL: {server.url('/page')}\nStatus: 200 OK\n")
    assert rendered.endswith("\n\n<p>héllo</p>")
    assert server.requests == [SeenRequest("/page", f"127.0.0.1:{server.port}")]


async def test_error_statuses_are_results_not_failures(server: LoopbackServer) -> None:
    page = await HttpFetcher(address_policy=loopback_only).fetch(server.url("/missing"))
    assert (page.status, page.text) == (404, "not found")


async def test_connects_to_the_checked_address_with_the_original_host(
    server: LoopbackServer, no_system_dns: None
) -> None:
    server.routes["/"] = Route(body=b"pinned")
    fetcher = HttpFetcher(address_policy=loopback_only, resolve=resolve_to_loopback)
    page = await fetcher.fetch(server.url(host="pinned.example"))

    assert page.text == "pinned"
    assert page.url == server.url(host="pinned.example")
    assert server.requests == [SeenRequest("/", f"pinned.example:{server.port}")]


async def test_a_long_text_is_truncated_with_a_note(server: LoopbackServer) -> None:
    server.routes["/long"] = Route(body=b"a" * (MAX_TEXT_CHARS + 5000))
    page = await HttpFetcher(address_policy=loopback_only).fetch(server.url("/long"))

    assert page.text == "a" * MAX_TEXT_CHARS
    assert f"first {MAX_TEXT_CHARS} of {MAX_TEXT_CHARS + 5000} characters" in page.note
    assert page.render().endswith(f"[{page.note}]")


async def test_an_endless_body_stops_at_the_byte_cap(server: LoopbackServer) -> None:
    server.routes["/endless"] = Route(endless=True)
    page = await HttpFetcher(address_policy=loopback_only).fetch(server.url("/endless"))

    assert f"longer than {MAX_BODY_BYTES} bytes" in page.note
    assert len(page.text) == MAX_TEXT_CHARS


async def test_a_binary_body_is_described_not_shown(server: LoopbackServer) -> None:
    server.routes["/logo.png"] = Route(headers={"Content-Type": "image/png"}, body=b"\x89PNG" * 10)
    page = await HttpFetcher(address_policy=loopback_only).fetch(server.url("/logo.png"))
    assert page.text == "(a binary body of 40 bytes, not shown)"


def redirect_chain(server: LoopbackServer, length: int) -> str:
    """Routes /hop/{length} -> ... -> /hop/0 (the page); returns the first URL."""
    for hop in range(length, 0, -1):
        server.routes[f"/hop/{hop}"] = Route(302, headers={"Location": f"/hop/{hop - 1}"})
    server.routes["/hop/0"] = Route(body=b"arrived")
    return server.url(f"/hop/{length}")


async def test_up_to_five_redirects_are_followed(server: LoopbackServer) -> None:
    start = redirect_chain(server, MAX_REDIRECTS)
    page = await HttpFetcher(address_policy=loopback_only).fetch(start)

    assert (page.text, page.url) == ("arrived", server.url("/hop/0"))
    assert len(server.requests) == MAX_REDIRECTS + 1


async def test_more_than_five_redirects_are_refused(server: LoopbackServer) -> None:
    start = redirect_chain(server, MAX_REDIRECTS + 1)
    with pytest.raises(ToolError, match=f"redirected more than {MAX_REDIRECTS} times"):
        await HttpFetcher(address_policy=loopback_only).fetch(start)
    assert "/hop/0" not in [seen.path for seen in server.requests]


async def test_each_redirect_hop_is_checked(server: LoopbackServer) -> None:
    other = f"http://127.0.0.2:{server.port}/secret"
    server.routes["/away"] = Route(301, headers={"Location": other})
    server.routes["/secret"] = Route(body=b"secret")
    with pytest.raises(ToolError) as refused:
        await HttpFetcher(address_policy=only_127_0_0_1).fetch(server.url("/away"))

    assert "127.0.0.2" in str(refused.value) and "not 127.0.0.1 (test policy)" in str(refused.value)
    assert [seen.path for seen in server.requests] == ["/away"]


async def test_a_closed_port_is_a_tool_error() -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(ToolError, match="could not connect to"):
        await HttpFetcher(address_policy=loopback_only).fetch(url)


async def test_a_slow_site_hits_the_total_time_cap(
    server: LoopbackServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_fetch, "TOTAL_SECONDS", 0.5)
    server.routes["/slow"] = Route(body=b"late", stall_seconds=10)
    with pytest.raises(ToolError, match=re.escape("took longer than 0.5 seconds")):
        await HttpFetcher(address_policy=loopback_only).fetch(server.url("/slow"))


# TLS: the certificate is checked against the URL's host, which is also the SNI


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for pinned.example (made by the openssl command)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=pinned.example",
            "-addext",
            "subjectAltName=DNS:pinned.example",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[LoopbackServer]:
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with LoopbackServer(tls=context) as running:
        yield running


def trusting(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


async def test_https_sends_the_host_name_as_sni_and_verifies_it(
    tls_server: LoopbackServer, certificate: tuple[Path, Path], no_system_dns: None
) -> None:
    tls_server.routes["/"] = Route(body=b"over tls")
    fetcher = HttpFetcher(
        address_policy=loopback_only, resolve=resolve_to_loopback, ssl_context=trusting(certificate)
    )
    page = await fetcher.fetch(tls_server.url(host="pinned.example", scheme="https"))

    assert page.text == "over tls"
    assert tls_server.server_names == ["pinned.example"]
    assert tls_server.requests == [SeenRequest("/", f"pinned.example:{tls_server.port}")]


async def test_https_refuses_a_certificate_for_another_host(
    tls_server: LoopbackServer, certificate: tuple[Path, Path], no_system_dns: None
) -> None:
    fetcher = HttpFetcher(
        address_policy=loopback_only, resolve=resolve_to_loopback, ssl_context=trusting(certificate)
    )
    with pytest.raises(ToolError, match=re.escape("could not connect to https://impostor.example")):
        await fetcher.fetch(tls_server.url(host="impostor.example", scheme="https"))
    assert tls_server.server_names == ["impostor.example"]
    assert tls_server.requests == []


# The registered tool


async def test_the_registered_tool_refuses_loopback_into_the_transcript(
    server: LoopbackServer,
    sessions: async_sessionmaker[AsyncSession],
    make_account: MakeAccount,
) -> None:
    account = await make_account()
    task = StartAgentTaskInput(task_id=str(uuid.uuid4()), user_id=account.id, prompt="fetch")
    async with session_scope(sessions) as session:
        await insert_task_row(session, task)
    registry = builtin_registry()
    tool = registry.get("http_fetch")
    assert tool is not None and tool.policy is ToolPolicy.CONFIRM

    call = ToolCall(id="fetch-1", name="http_fetch", arguments={"url": server.url()})
    activities = ToolActivities(sessions, registry)
    result = await ActivityEnvironment().run(
        activities.run_tool,
        ToolCallInput(task_id=task.task_id, user_id=account.id, call=call, result_seq=1),
    )

    assert result.is_error and "loopback" in result.preview
    assert server.requests == []
    async with session_scope(sessions) as session:
        row = (
            await session.exec(
                select(Message).where(Message.task_id == task.task_id, col(Message.seq) == 1)
            )
        ).one()
    assert row.content[0]["tool_use_id"] == "fetch-1" and row.content[0]["is_error"] is True
