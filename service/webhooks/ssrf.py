"""SSRF guard for subscriber webhook URLs.

``check_url_syntax`` runs when a subscription is created or updated (no DNS). ``resolve_safe``
runs before every delivery: the caller must connect to exactly the addresses it returns, so a
name cannot resolve to a public address for the check and a private one for the connection.
"""

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

MAX_URL_LENGTH = 2048
ALLOWED_SCHEMES = {"http": 80, "https": 443}
INTERNAL_NAME_SUFFIXES = (".localhost", ".internal", ".local")

_HOSTNAME = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*$")
# Characters inet_aton may read as an IPv4 number (decimal, 0-octal, 0x-hex), dots between.
_IPV4_NUMBERS = re.compile(r"^[0-9a-fx.]+$", re.IGNORECASE)
# WHATWG: a host whose last label is a number must be an IPv4 address or the URL is invalid.
_NUMERIC_LAST_LABEL = re.compile(r"(^|\.)([0-9]+|0x[0-9a-f]*)$", re.IGNORECASE)

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
# IPv6 forms whose low 32 bits are simply where the packet goes over IPv4.
_IPV4_CARRIERS = tuple(
    ipaddress.IPv6Network(net)
    for net in ("::ffff:0:0/96", "::ffff:0:0:0/96", "::/96", "64:ff9b::/96")
)
# Named for clearer refusal reasons; 3fff::/20 is also missing from Python 3.11's tables.
_NAMED_NETWORKS = tuple(
    (kind, ipaddress.ip_network(net))
    for kind, net in (
        ("shared (carrier-grade NAT)", "100.64.0.0/10"),
        ("benchmarking", "198.18.0.0/15"),
        ("documentation", "192.0.2.0/24"),
        ("documentation", "198.51.100.0/24"),
        ("documentation", "203.0.113.0/24"),
        ("documentation", "2001:db8::/32"),
        ("documentation", "3fff::/20"),
        ("Teredo", "2001::/32"),
        ("local-use NAT64", "64:ff9b:1::/48"),
    )
)


class UnsafeWebhookURL(ValueError):
    """A subscriber URL we refuse to deliver to; ``reason`` says why, for the API client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnresolvableHost(UnsafeWebhookURL):
    """The host resolved to no address; unlike other refusals this may be temporary."""


@dataclass(frozen=True)
class ParsedURL:
    scheme: str
    host: str
    port: int
    path_and_query: str


def parse_webhook_url(url: str) -> ParsedURL:
    """Parse a subscriber URL, rejecting anything but a plain ``http(s)://host[:port]/path?query``.

    ``host`` comes back lower-case, IDNA-encoded, without brackets or trailing dot, and with
    IPv4 literals in any legacy form rewritten as a dotted quad.
    """
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeWebhookURL(f"URL must be at most {MAX_URL_LENGTH} characters")
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise UnsafeWebhookURL("URL must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeWebhookURL(f"URL is malformed: {exc}") from exc
    if parts.scheme not in ALLOWED_SCHEMES:
        raise UnsafeWebhookURL("scheme must be http or https")
    if "@" in parts.netloc:
        raise UnsafeWebhookURL("URL must not contain credentials (user:password@)")
    if not parts.hostname:
        raise UnsafeWebhookURL("URL must have a host")
    if port == 0:
        raise UnsafeWebhookURL("port must be between 1 and 65535")
    path_and_query = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return ParsedURL(
        scheme=parts.scheme,
        host=_normalise_host(parts.hostname, bracketed=parts.netloc.startswith("[")),
        port=port or ALLOWED_SCHEMES[parts.scheme],
        path_and_query=path_and_query,
    )


def _normalise_host(host: str, *, bracketed: bool) -> str:
    return _normalise_ipv6_host(host) if bracketed else _normalise_named_host(host)


def _normalise_ipv6_host(host: str) -> str:
    address = _ipv6_literal(host) if "%" not in host else None
    if address is None:
        raise UnsafeWebhookURL("host in brackets must be an IPv6 address without a zone")
    return str(address)


def _normalise_named_host(host: str) -> str:
    host = host.removesuffix(".")
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise UnsafeWebhookURL(f"host {host!r} is not a valid domain name") from exc
    address = literal_host_address(host)
    if address is not None:
        return str(address)
    if not _HOSTNAME.match(host):
        raise UnsafeWebhookURL(f"host {host!r} is not a valid domain name")
    if _NUMERIC_LAST_LABEL.search(host):
        raise UnsafeWebhookURL(f"host {host!r} looks like an IPv4 address but is not a valid one")
    return host


def literal_host_address(host: str) -> IPAddress | None:
    """Return the IP address ``host`` spells, in any form libc or browsers accept, else None.

    Besides dotted quads and (bracketed) IPv6, this recognises the legacy IPv4 forms
    ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1`` and ``0x7f.1``.
    """
    host = host.removesuffix(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        return _ipv6_literal(host)
    if not _IPV4_NUMBERS.match(host):
        # inet_aton ignores anything after whitespace, so only hand it number-shaped text.
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _ipv6_literal(host: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(host)
    except ValueError:
        return None


def is_forbidden_address(ip: IPAddress) -> bool:
    """True unless ``ip`` is a globally routable unicast address we may deliver to."""
    return _forbidden_description(ip) is not None


def _forbidden_description(ip: IPAddress) -> str | None:
    """Describe why ``ip`` is forbidden (e.g. "private address 10.0.0.1"), or None if it is not."""
    if isinstance(ip, ipaddress.IPv6Address):
        for embedded in _embedded_ipv4s(ip):
            inner = _forbidden_description(embedded)
            if inner is not None:
                return f"{inner} embedded in {ip}"
        if _carried_ipv4(ip) is not None:
            return None
    kind = _forbidden_kind(ip)
    return f"{kind} address {ip}" if kind else None


def _forbidden_kind(ip: IPAddress) -> str | None:
    named = next((kind for kind, net in _NAMED_NETWORKS if ip in net), None)
    checks: tuple[tuple[str | None, bool], ...] = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("broadcast", ip == _BROADCAST),
        (named, named is not None),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("non-public", not ip.is_global),
    )
    return next((kind for kind, hit in checks if hit), None)


def _embedded_ipv4s(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    carried = _carried_ipv4(ip)
    if carried is not None:
        return (carried,)
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    if ip.teredo is not None:
        return ip.teredo
    return ()


def _carried_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address that alone decides where mapped, compatible and NAT64 forms go."""
    if int(ip) <= 1:
        return None  # :: and ::1 are themselves, not IPv4-compatible 0.0.0.0 and 0.0.0.1
    if any(ip in carrier for carrier in _IPV4_CARRIERS):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _is_internal_name(host: str) -> bool:
    host = host.lower().removesuffix(".")
    return host == "localhost" or host.endswith(INTERNAL_NAME_SUFFIXES)


def check_url_syntax(url: str, *, allow_private: bool) -> ParsedURL:
    """Validate a subscriber URL without DNS: its shape, and its host if an IP or internal name."""
    parsed = parse_webhook_url(url)
    if allow_private:
        return parsed
    address = literal_host_address(parsed.host)
    if address is not None:
        description = _forbidden_description(address)
        if description is not None:
            raise UnsafeWebhookURL(f"host is {_a(description)}")
    elif _is_internal_name(parsed.host):
        raise UnsafeWebhookURL(f"host {parsed.host} is an internal name")
    return parsed


async def resolve_safe(
    host: str, port: int, *, allow_private: bool, resolver: Resolver | None = None
) -> list[str]:
    """Resolve ``host`` (A and AAAA) and return its addresses, refusing if any is forbidden.

    Connect to these addresses and nothing else. ``resolver`` replaces the system resolver in tests.
    """
    literal = literal_host_address(host)
    if literal is not None:
        names = [str(literal)]
    else:
        names = await (resolver or _system_resolve)(host, port)
    addresses = _parse_addresses(host, names)
    if not addresses:
        raise UnresolvableHost(f"{host} does not resolve to any address")
    if not allow_private:
        _reject_forbidden(host, addresses)
    return [str(address) for address in addresses]


async def _system_resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHost(f"{host} does not resolve: {exc}") from exc
    return [str(sockaddr[0]) for _family, _type, _proto, _name, sockaddr in infos]


def _parse_addresses(host: str, names: list[str]) -> list[IPAddress]:
    addresses: list[IPAddress] = []
    for name in names:
        try:
            address = ipaddress.ip_address(name)
        except ValueError as exc:
            raise UnsafeWebhookURL(f"{host} resolved to a non-IP {name!r}") from exc
        if address not in addresses:
            addresses.append(address)
    return addresses


def _reject_forbidden(host: str, addresses: list[IPAddress]) -> None:
    for address in addresses:
        description = _forbidden_description(address)
        if description is not None:
            raise UnsafeWebhookURL(f"{host} resolves to {_a(description)}")


def _a(noun_phrase: str) -> str:
    article = "an" if noun_phrase[0] in "aeiou" else "a"
    return f"{article} {noun_phrase}"
