"""The fetcher behind the `http_fetch` tool: GET a public http(s) URL and nothing else.

Every hop (the first URL and each redirect) is resolved once; if any address the name
resolves to is not public, the hop is refused. The connection then goes to the address
that was checked, never to a second lookup of the name (DNS rebinding): the request URL
carries that IP, while the `Host` header and the TLS server name (SNI, and the name the
certificate is verified against) stay the original host's.
"""

import asyncio
import codecs
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import httpx

from activities.tool_registry import ToolError

MAX_REDIRECTS = 5
MAX_BODY_BYTES = 1_000_000
MAX_TEXT_CHARS = 100_000
TOTAL_SECONDS = 15.0  # below the tool's activity timeout, so a slow site is a ToolError
HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
USER_AGENT = "Keel-http_fetch/0.1"

IPAddress = IPv4Address | IPv6Address
AddressPolicy = Callable[[IPAddress], str | None]
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

CLOUD_METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        ip_address("169.254.169.254"),  # AWS, GCP, Azure, Oracle, DigitalOcean…
        ip_address("fd00:ec2::254"),  # AWS over IPv6
        ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
NAT64_PREFIX = ip_network("64:ff9b::/96")
TEXT_MEDIA_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "application/x-www-form-urlencoded",
    }
)


def check_address(ip: IPAddress) -> str | None:
    """Why `ip` must not be fetched from, or None when it is a public address."""
    if isinstance(ip, IPv6Address):
        if ip.scope_id is not None:
            ip = IPv6Address(int(ip))
        if ip.ipv4_mapped is not None:
            reason = check_address(ip.ipv4_mapped)
            return f"{reason} (IPv4-mapped)" if reason else None
        embedded = ip.sixtofour or (
            IPv4Address(int(ip) & 0xFFFF_FFFF) if ip in NAT64_PREFIX else None
        )
        if embedded is not None and (reason := check_address(embedded)):
            return f"{reason} (embedded in a 6to4 or NAT64 address)"
    if ip in CLOUD_METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if isinstance(ip, IPv6Address) and ip.is_site_local:
        return "a site-local address"
    if not ip.is_global:
        return "not a globally routable address"
    return None


async def resolve_host(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to, in the resolver's order, without duplicates."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ip_address(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
    return addresses


@dataclass(frozen=True)
class FetchedPage:
    """The final response of a fetch, its body decoded and cut to size."""

    url: str
    status: int
    reason: str
    content_type: str
    text: str
    note: str = ""

    def render(self) -> str:
        """The page as Claude reads it: a short header, a blank line, the body."""
        lines = [
            f"URL: {self.url}",
            f"Status: {self.status} {self.reason}".rstrip(),
            f"Content-Type: {self.content_type or '(none)'}",
            "",
            self.text,
        ]
        if self.note:
            lines += ["", f"[{self.note}]"]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Redirect:
    location: str


class HttpFetcher:
    """GETs public http(s) URLs with size, time and redirect caps.

    `address_policy` decides which resolved addresses may be connected to. Production code
    uses the default, `check_address`; only tests pass another (to reach a server they
    run on loopback). Nothing read from settings or the environment can change it.
    """

    def __init__(
        self,
        *,
        address_policy: AddressPolicy = check_address,
        resolve: Resolver = resolve_host,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._address_policy = address_policy
        self._resolve = resolve
        self._verify: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True

    async def fetch(self, url: str) -> FetchedPage:
        """GET `url`, following up to MAX_REDIRECTS redirects, each hop checked the same
        way. Refusals and network failures are ToolErrors."""
        try:
            async with asyncio.timeout(TOTAL_SECONDS):
                return await self._follow(url)
        except TimeoutError:
            raise ToolError(
                f"fetching {url} took longer than {TOTAL_SECONDS:g} seconds and was stopped"
            ) from None

    async def _follow(self, url: str) -> FetchedPage:
        current = parse_public_url(url)
        for _hop in range(MAX_REDIRECTS + 1):
            outcome = await self._get(current)
            if isinstance(outcome, FetchedPage):
                return outcome
            try:
                current = parse_public_url(str(current.join(outcome.location)))
            except httpx.InvalidURL as exc:
                raise ToolError(
                    f"{current} redirected to an invalid URL {outcome.location!r}: {exc}"
                ) from None
        raise ToolError(
            f"{url} redirected more than {MAX_REDIRECTS} times; stopped before {current}"
        )

    async def _addresses(self, url: httpx.URL) -> list[IPAddress]:
        """The host's addresses, all of them allowed by the policy, or a ToolError."""
        host = url.raw_host.decode("ascii")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await self._resolve(host, port)
        except OSError as exc:
            raise ToolError(f"could not resolve the host {host!r} of {url}: {exc}") from None
        if not addresses:
            raise ToolError(f"the host {host!r} of {url} has no addresses")
        for address in addresses:
            reason = self._address_policy(address)
            if reason is not None:
                where = str(address) if host == str(address) else f"{host} resolves to {address}"
                raise ToolError(
                    f"refused to fetch {url}: {where}, {reason}; "
                    "http_fetch only reaches public internet addresses"
                )
        return addresses

    async def _get(self, url: httpx.URL) -> FetchedPage | _Redirect:
        """One GET, to the first checked address that accepts a connection."""
        addresses = await self._addresses(url)
        host = url.raw_host.decode("ascii")
        headers = {
            "Host": url.netloc.decode("ascii"),
            "User-Agent": USER_AGENT,
            "Accept": "*/*",
            # Compressed bodies would expand past the byte cap inside a single chunk.
            "Accept-Encoding": "identity",
        }
        extensions = {"sni_hostname": host} if url.scheme == "https" else {}
        failure: httpx.HTTPError | None = None
        for address in addresses:
            # A client per hop and address: a pooled TLS connection made for one host name
            # must never carry a request for another.
            async with httpx.AsyncClient(
                verify=self._verify, trust_env=False, timeout=HTTP_TIMEOUT
            ) as client:
                request = client.build_request(
                    "GET",
                    url.copy_with(host=str(address)),
                    headers=headers,
                    extensions=extensions,
                )
                try:
                    response = await client.send(request, stream=True)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    failure = exc
                    continue
                except httpx.HTTPError as exc:
                    raise ToolError(describe_failure(url, exc)) from None
                try:
                    if response.is_redirect:
                        return _Redirect(response.headers["Location"])
                    return await read_page(url, response)
                except httpx.HTTPError as exc:
                    raise ToolError(describe_failure(url, exc)) from None
                finally:
                    await response.aclose()
        assert failure is not None
        raise ToolError(describe_failure(url, failure))


def parse_public_url(url: str) -> httpx.URL:
    """The URL, if it is one http_fetch may try: http(s), a host, no user name or password."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ToolError(f"{url!r} is not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise ToolError(f"refused to fetch {url!r}: only http and https URLs can be fetched")
    if parsed.userinfo:
        raise ToolError(
            f"refused to fetch {url!r}: URLs with a user name or password are not allowed"
        )
    if not parsed.raw_host:
        raise ToolError(f"{url!r} has no host")
    return parsed


async def read_page(url: httpx.URL, response: httpx.Response) -> FetchedPage:
    """Read the body up to MAX_BODY_BYTES, then decode it if it is text."""
    chunks: list[bytes] = []
    size = 0
    cut = False
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            cut = True
            break
    body = b"".join(chunks)[:MAX_BODY_BYTES]
    content_type = response.headers.get("Content-Type", "")
    notes: list[str] = []
    if cut:
        notes.append(f"the body was longer than {MAX_BODY_BYTES} bytes; only those were read")
    if is_text(content_type):
        text = body.decode(text_encoding(response), errors="replace")
        if len(text) > MAX_TEXT_CHARS:
            notes.append(f"truncated: showing the first {MAX_TEXT_CHARS} of {len(text)} characters")
            text = text[:MAX_TEXT_CHARS]
    else:
        text = f"(a binary body of {len(body)}{'+' if cut else ''} bytes, not shown)"
    return FetchedPage(
        url=str(url),
        status=response.status_code,
        reason=response.reason_phrase,
        content_type=content_type,
        text=text,
        note="; ".join(notes),
    )


def is_text(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return (
        not media_type
        or media_type.startswith("text/")
        or media_type.endswith(("+json", "+xml"))
        or media_type in TEXT_MEDIA_TYPES
    )


def text_encoding(response: httpx.Response) -> str:
    """The charset the response declares, if Python knows it, else UTF-8."""
    declared = response.charset_encoding
    if declared:
        try:
            return codecs.lookup(declared).name
        except LookupError:
            pass
    return "utf-8"


def describe_failure(url: httpx.URL, exc: httpx.HTTPError) -> str:
    """What went wrong on the network, in words Claude can act on."""
    if isinstance(exc, httpx.ConnectTimeout):
        kind = "timed out connecting to"
    elif isinstance(exc, httpx.ConnectError):
        kind = "could not connect to"
    elif isinstance(exc, httpx.TimeoutException):
        kind = "timed out reading from"
    else:
        kind = "failed to fetch"
    return f"{kind} {url}: {str(exc) or type(exc).__name__}"
