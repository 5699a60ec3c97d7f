"""Where callbacks may go: public addresses only, unless the operator allows a network."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import ip_address, ip_network

import anyio
import httpx
import pytest

from api.callback_policy import (
    CallbackPolicy,
    IPAddress,
    RefusedCallback,
    UnresolvedHost,
    address_refusal,
    non_public_kind,
    pinned_request,
)
from execmesh.errors import ConfigError
from execmesh.settings import Settings


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("100.64.0.1", "non-public"),
        ("192.0.2.1", "private"),
        ("2001:db8::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::", "6to4 loopback"),
        ("2002:a00:1::", "6to4 private"),
        ("64:ff9b::7f00:1", "reserved"),
        ("::7f00:1", "reserved"),
    ],
)
def test_a_non_public_address_is_named_by_its_kind(address: str, kind: str) -> None:
    assert non_public_kind(ip_address(address)) == kind


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "2002:808:808::"]
)
def test_a_public_address_may_be_called_back(address: str) -> None:
    assert address_refusal(ip_address(address), ()) is None


def test_an_allowed_network_lets_its_addresses_through_and_no_others() -> None:
    allowed = (ip_network("10.20.0.0/16"), ip_network("::1/128"))
    assert address_refusal(ip_address("10.20.3.4"), allowed) is None
    assert address_refusal(ip_address("::ffff:10.20.3.4"), allowed) is None
    assert address_refusal(ip_address("::1"), allowed) is None
    assert address_refusal(ip_address("10.21.0.1"), allowed) == "10.21.0.1 is a private address"
    assert address_refusal(ip_address("127.0.0.1"), allowed) == ("127.0.0.1 is a loopback address")


def resolver(answers: dict[str, Sequence[str]]) -> CallbackPolicy:
    async def resolve(host: str) -> list[IPAddress]:
        if host not in answers:
            raise UnresolvedHost(f"the host {host} does not resolve")
        return [ip_address(a) for a in answers[host]]

    return CallbackPolicy(resolve=resolve)


def allowed(policy: CallbackPolicy, url: str) -> list[IPAddress]:
    return anyio.run(policy.allowed_addresses, url)


def refusal(policy: CallbackPolicy, url: str) -> str:
    with pytest.raises(RefusedCallback) as refused:
        allowed(policy, url)
    return str(refused.value)


def test_a_literal_internal_address_is_refused_with_its_kind() -> None:
    policy = resolver({})
    assert refusal(policy, "http://169.254.169.254/latest/meta-data/") == (
        "169.254.169.254 is a link-local address; callbacks go to public addresses only"
    )
    assert "::1 is a loopback address" in refusal(policy, "http://[::1]:8080/hook")
    assert "private" in refusal(policy, "https://[::ffff:10.0.0.1]/hook")


def test_a_host_that_resolves_only_to_internal_addresses_is_refused() -> None:
    policy = resolver({"internal.example": ["10.0.0.5", "fd00::5"]})
    assert refusal(policy, "https://internal.example/hook") == (
        "the host internal.example resolves only to non-public addresses (10.0.0.5 is a "
        "private address; fd00::5 is a private address); callbacks go to public addresses only"
    )


def test_only_the_public_addresses_of_a_mixed_host_are_called() -> None:
    policy = resolver({"mixed.example": ["10.0.0.5", "93.184.215.14"]})
    assert allowed(policy, "https://mixed.example/") == [ip_address("93.184.215.14")]


def test_a_host_that_does_not_resolve_is_refused() -> None:
    with pytest.raises(UnresolvedHost, match=r"^the host empty\.example does not resolve$"):
        allowed(resolver({"empty.example": []}), "https://empty.example/")
    with pytest.raises(UnresolvedHost, match=r"^the host nowhere\.invalid does not resolve: "):
        allowed(CallbackPolicy(), "https://nowhere.invalid/")


def test_the_system_resolver_finds_localhost_and_refuses_it() -> None:
    assert "loopback" in refusal(CallbackPolicy(), "http://localhost:9/hook")
    loopback = CallbackPolicy((ip_network("127.0.0.0/8"), ip_network("::1/128")))
    assert ip_address("127.0.0.1") in allowed(loopback, "http://localhost:9/")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://93.184.215.14/x", "the scheme must be http or https, not 'ftp'"),
        ("file:///etc/passwd", "the scheme must be http or https, not 'file'"),
        ("gopher://93.184.215.14:6379/_", "the scheme must be http or https, not 'gopher'"),
        ("https://user:pw@93.184.215.14/", "the URL must not carry a user name or password"),
        ("https://user@93.184.215.14/", "the URL must not carry a user name or password"),
        ("http:///hook", "the URL has no host"),
    ],
)
def test_only_plain_http_urls_are_accepted(url: str, reason: str) -> None:
    assert refusal(resolver({}), url) == reason


def test_a_pinned_request_goes_to_the_address_and_keeps_the_host_name() -> None:
    url = httpx.URL("https://hooks.example:8443/a?b=1")
    request = pinned_request(url, ip_address("93.184.215.14"))
    assert str(request.url) == "https://93.184.215.14:8443/a?b=1"
    assert request.headers == {"Host": "hooks.example:8443"}
    assert request.extensions == {"sni_hostname": "hooks.example"}


def test_a_pinned_plain_http_request_to_ipv6_has_no_tls_name() -> None:
    request = pinned_request(httpx.URL("http://hooks.example/a"), ip_address("2606:4700::1"))
    assert str(request.url) == "http://[2606:4700::1]/a"
    assert request.headers == {"Host": "hooks.example"}
    assert request.extensions == {}


def test_a_literal_address_url_is_sent_as_it_is() -> None:
    url = httpx.URL("https://93.184.215.14/a")
    assert pinned_request(url, ip_address("93.184.215.14")).url == url


def test_the_allowed_networks_are_read_from_the_environment() -> None:
    variable = "EXECMESH_API_CALLBACK_ALLOWED_NETWORKS"
    assert Settings.from_env({}).api_callback_allowed_networks == ()
    settings = Settings.from_env({variable: "127.0.0.0/8, fd00::/8,"})
    assert settings.api_callback_allowed_networks == (
        ip_network("127.0.0.0/8"),
        ip_network("fd00::/8"),
    )
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: "10.0.0.0/33"})
