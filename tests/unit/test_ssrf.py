import asyncio
import ipaddress

import pytest

from service.webhooks.ssrf import (
    ParsedURL,
    Resolver,
    UnresolvableHost,
    UnsafeWebhookURL,
    check_url_syntax,
    is_forbidden_address,
    literal_host_address,
    parse_webhook_url,
    resolve_safe,
)

PRIVATE_URLS = [
    ("http://127.0.0.1/hook", "loopback address 127.0.0.1"),
    ("http://127.1/hook", "loopback address 127.0.0.1"),
    ("http://2130706433/hook", "loopback address 127.0.0.1"),
    ("http://0x7f000001/hook", "loopback address 127.0.0.1"),
    ("http://0177.0.0.1/hook", "loopback address 127.0.0.1"),
    ("http://0x7f.1/hook", "loopback address 127.0.0.1"),
    ("http://127.0.0.1./hook", "loopback address 127.0.0.1"),
    ("http://[::1]/hook", "loopback address ::1"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback address 127.0.0.1 embedded in"),
    ("http://[::ffff:7f00:1]/hook", "loopback address 127.0.0.1 embedded in"),
    ("http://[::127.0.0.1]/hook", "loopback address 127.0.0.1 embedded in"),
    ("http://10.1.2.3/hook", "private address 10.1.2.3"),
    ("http://172.16.0.1/hook", "private address 172.16.0.1"),
    ("http://192.168.1.1:8080/hook", "private address 192.168.1.1"),
    ("http://169.254.169.254/latest/meta-data/", "link-local address 169.254.169.254"),
    ("http://100.64.0.1/hook", "shared (carrier-grade NAT) address 100.64.0.1"),
    ("http://198.18.0.1/hook", "benchmarking address 198.18.0.1"),
    ("http://192.0.2.1/hook", "documentation address 192.0.2.1"),
    ("http://0.0.0.0/hook", "unspecified address 0.0.0.0"),
    ("http://[::]/hook", "unspecified address ::"),
    ("http://[fe80::1]/hook", "link-local address fe80::1"),
    ("http://[fc00::1]/hook", "private address fc00::1"),
    ("http://[fd12:3456::1]/hook", "private address fd12:3456::1"),
    ("http://[2002:0a00:0001::]/hook", "private address 10.0.0.1 embedded in 2002:a00:1::"),
    ("http://[64:ff9b::10.0.0.1]/hook", "private address 10.0.0.1 embedded in 64:ff9b::a00:1"),
    ("http://224.0.0.1/hook", "multicast address 224.0.0.1"),
    ("http://[ff02::1]/hook", "multicast address ff02::1"),
    ("http://255.255.255.255/hook", "broadcast address 255.255.255.255"),
    ("http://240.0.0.1/hook", "reserved address 240.0.0.1"),
    ("http://localhost/hook", "internal name"),
    ("http://LOCALHOST:8000/hook", "internal name"),
    ("http://localhost./hook", "internal name"),
    ("http://foo.localhost/hook", "internal name"),
    ("http://metadata.google.internal/hook", "internal name"),
    ("http://printer.local/hook", "internal name"),
]

MALFORMED_URLS = [
    ("file:///etc/passwd", "scheme must be http or https"),
    ("gopher://example.com:70/_", "scheme must be http or https"),
    ("ftp://example.com/hook", "scheme must be http or https"),
    ("javascript:alert(1)", "scheme must be http or https"),
    ("//example.com/hook", "scheme must be http or https"),
    ("example.com/hook", "scheme must be http or https"),
    ("https://user:pw@example.com/hook", "credentials"),
    ("https://example.com@127.0.0.1/hook", "credentials"),
    ("https:///hook", "must have a host"),
    ("https://", "must have a host"),
    ("https://:443/hook", "must have a host"),
    ("https://example.com:0/hook", "port must be between 1 and 65535"),
    ("https://example.com:65536/hook", "malformed"),
    ("https://example.com:http/hook", "malformed"),
    ("https://example.com/" + "a" * 2048, "at most 2048 characters"),
    ("https://exa mple.com/hook", "whitespace or control characters"),
    ("https://example.com/ho\nok", "whitespace or control characters"),
    ("https://[fe80::1%25eth0]/hook", "without a zone"),
    ("https://exa%6dple.com/hook", "not a valid domain name"),
    ("https://example.com\\.127.0.0.1/hook", "not a valid domain name"),
    ("https://a..b/hook", "not a valid domain name"),
    ("https://1.2.3.4.5/hook", "not a valid one"),
    ("https://08.0.0.1/hook", "not a valid one"),
]

PUBLIC_URLS = [
    (
        "https://example.com/hook",
        ParsedURL("https", "example.com", 443, "/hook"),
    ),
    (
        "http://93.184.216.34/",
        ParsedURL("http", "93.184.216.34", 80, "/"),
    ),
    (
        "https://[2606:4700::1111]:8443/hook?a=1#frag",
        ParsedURL("https", "2606:4700::1111", 8443, "/hook?a=1"),
    ),
    (
        "HTTPS://Example.COM.",
        ParsedURL("https", "example.com", 443, "/"),
    ),
    (
        "https://hooks.münchen.de/x",
        ParsedURL("https", "hooks.xn--mnchen-3ya.de", 443, "/x"),
    ),
    (
        "https://1.example/hook",
        ParsedURL("https", "1.example", 443, "/hook"),
    ),
    (
        "https://example.com/" + "a" * (2048 - len("https://example.com/")),
        ParsedURL("https", "example.com", 443, "/" + "a" * (2048 - len("https://example.com/"))),
    ),
]


@pytest.mark.parametrize(("url", "reason"), PRIVATE_URLS + MALFORMED_URLS)
def test_unsafe_url_is_rejected_with_a_reason(url: str, reason: str) -> None:
    with pytest.raises(UnsafeWebhookURL) as raised:
        check_url_syntax(url, allow_private=False)

    assert reason in raised.value.reason


@pytest.mark.parametrize(("url", "parsed"), PUBLIC_URLS)
def test_public_url_is_accepted_and_normalised(url: str, parsed: ParsedURL) -> None:
    assert check_url_syntax(url, allow_private=False) == parsed


@pytest.mark.parametrize(("url", "reason"), PRIVATE_URLS)
def test_allow_private_opens_private_hosts(url: str, reason: str) -> None:
    check_url_syntax(url, allow_private=True)


@pytest.mark.parametrize(("url", "reason"), MALFORMED_URLS)
def test_allow_private_still_rejects_malformed_urls(url: str, reason: str) -> None:
    with pytest.raises(UnsafeWebhookURL) as raised:
        check_url_syntax(url, allow_private=True)

    assert reason in raised.value.reason


def test_legacy_ipv4_host_is_normalised_to_a_dotted_quad() -> None:
    assert parse_webhook_url("http://0x7f.1:8080/hook").host == "127.0.0.1"


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "0X7F000001", "0177.0.0.1", "0x7f.1"],
)
def test_legacy_ipv4_forms_are_recognised(host: str) -> None:
    assert literal_host_address(host) == ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize("host", ["::1", "[::1]"])
def test_ipv6_literals_are_recognised_with_or_without_brackets(host: str) -> None:
    assert literal_host_address(host) == ipaddress.IPv6Address("::1")


@pytest.mark.parametrize(
    "host", ["example.com", "1.example", "cafe.example", "dead.beef", "face", "", "1.2.3.4 x"]
)
def test_hostnames_are_not_ip_literals(host: str) -> None:
    assert literal_host_address(host) is None


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:0:10.0.0.1",
        "2002:c0a8:101::1",
        "64:ff9b::192.168.1.1",
        "64:ff9b:1::8.8.8.8",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo, client 192.0.2.45
        "2001:db8::1",
        "3fff::1",
        "fec0::1",
        "100::1",
        "5f00::1",
    ],
)
def test_forbidden_addresses(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "2606:4700::1111",
        "2001:4860:4860::8888",
        "::ffff:8.8.8.8",
        "64:ff9b::8.8.8.8",
        "2002:808:808::1",
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert not is_forbidden_address(ipaddress.ip_address(address))


def _fake_resolver(addresses: list[str]) -> Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        return addresses

    return resolve


def _resolve(host: str, addresses: list[str], *, allow_private: bool = False) -> list[str]:
    return asyncio.run(
        resolve_safe(host, 443, allow_private=allow_private, resolver=_fake_resolver(addresses))
    )


@pytest.mark.parametrize(
    ("addresses", "reason"),
    [
        (["10.0.0.5"], "hooks.example resolves to a private address 10.0.0.5"),
        (["93.184.216.34", "127.0.0.1"], "hooks.example resolves to a loopback address 127.0.0.1"),
        (["2606:4700::1111", "fd00::1"], "hooks.example resolves to a private address fd00::1"),
        (["::ffff:169.254.169.254"], "link-local address 169.254.169.254 embedded in"),
        (["not-an-ip"], "non-IP"),
    ],
)
def test_name_resolving_to_any_forbidden_address_is_rejected(
    addresses: list[str], reason: str
) -> None:
    with pytest.raises(UnsafeWebhookURL) as raised:
        _resolve("hooks.example", addresses)

    assert reason in raised.value.reason


def test_name_resolving_to_public_addresses_returns_them_deduplicated() -> None:
    resolved = _resolve("hooks.example", ["93.184.216.34", "2606:4700::1111", "93.184.216.34"])

    assert resolved == ["93.184.216.34", "2606:4700::1111"]


def test_name_resolving_to_nothing_is_unresolvable() -> None:
    with pytest.raises(UnresolvableHost):
        _resolve("hooks.example", [])


def test_allow_private_returns_private_addresses() -> None:
    assert _resolve("redis", ["10.0.0.5"], allow_private=True) == ["10.0.0.5"]


def test_ip_literal_host_is_judged_without_asking_the_resolver() -> None:
    with pytest.raises(UnsafeWebhookURL, match=r"loopback address 127\.0\.0\.1"):
        _resolve("0x7f000001", ["93.184.216.34"])


def test_localhost_is_rejected_by_the_real_resolver() -> None:
    with pytest.raises(UnsafeWebhookURL, match="localhost resolves to a loopback address"):
        asyncio.run(resolve_safe("localhost", 80, allow_private=False))


def test_real_resolver_returns_localhost_addresses_when_private_is_allowed() -> None:
    resolved = asyncio.run(resolve_safe("localhost", 80, allow_private=True))

    assert resolved
    assert all(ipaddress.ip_address(address).is_loopback for address in resolved)


def test_unknown_name_is_unresolvable_by_the_real_resolver() -> None:
    with pytest.raises(UnresolvableHost):
        asyncio.run(resolve_safe("does-not-exist.invalid", 80, allow_private=False))
