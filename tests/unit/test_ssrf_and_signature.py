"""Webhook URLs refused for server-side request forgery, and the signature a receiver checks."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import pytest

from exchange import ssrf
from exchange.webhooks import parse_schedule, sign


@pytest.mark.parametrize("ip", ["169.254.169.254", "169.254.0.1", "fd00:ec2::254", "fe80::1", "::ffff:169.254.169.254"])
def test_link_local_and_metadata_addresses_are_refused_always(ip):
    for allow in (False, True):
        with pytest.raises(ssrf.UrlRefused):
            ssrf.check_address(ip, allow)


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.1.2.3", "192.168.0.9", "172.16.0.1", "::1", "0.0.0.0", "fd12::1", "100.64.0.1"])
def test_private_and_loopback_addresses_are_refused_unless_allowed(ip):
    with pytest.raises(ssrf.UrlRefused):
        ssrf.check_address(ip, False)
    ssrf.check_address(ip, True)


def test_public_addresses_pass():
    for ip in ("8.8.8.8", "2606:4700:4700::1111"):
        ssrf.check_address(ip, False)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "gopher://x", "http://", "https://user:pw@example.com/",
                                 "http://example.com:99999/", "javascript:alert(1)", "http://" + "a" * 3000])
def test_urls_that_are_not_plain_http_are_refused(url):
    with pytest.raises(ssrf.UrlRefused):
        ssrf.parse(url)


def test_resolution_checks_every_address_and_refuses_the_exchange_itself():
    async def main() -> None:
        t = ssrf.parse("http://127.0.0.1:8080/hook")
        with pytest.raises(ssrf.UrlRefused):
            await ssrf.resolve(t, False)
        assert await ssrf.resolve(t, True) == "127.0.0.1"
        with pytest.raises(ssrf.UrlRefused, match="itself"):
            await ssrf.resolve(t, True, ("127.0.0.1", 8080))
        with pytest.raises(ssrf.UrlRefused, match="itself"):
            await ssrf.resolve(ssrf.parse("http://localhost:8080/"), True, ("0.0.0.0", 8080))
        with pytest.raises(ssrf.UrlRefused):
            await ssrf.resolve(ssrf.parse("http://169.254.169.254/latest/meta-data"), True)
        with pytest.raises(ssrf.UrlRefused):
            await ssrf.resolve(ssrf.parse("http://[fd00:ec2::254]/"), True)
        assert ssrf.pin(ssrf.parse("https://example.com/a?b=1"), "93.184.216.34") == "https://93.184.216.34:443/a?b=1"

    asyncio.run(main())


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body():
    body = b'{"id":"evt_0000000000000001_000"}'
    header = sign("whsec_test", 1_800_000_000, body)
    t, v1 = (kv.split("=", 1)[1] for kv in header.split(","))
    assert t == "1800000000"
    assert v1 == hmac.new(b"whsec_test", b"1800000000." + body, hashlib.sha256).hexdigest()


def test_the_retry_schedule_is_a_list_of_delays():
    assert parse_schedule("30, 120,600") == (30.0, 120.0, 600.0)
    from exchange.settings import Settings

    default = parse_schedule(Settings().webhook_retry_s)
    assert default[0] <= 60 and sum(default) >= 24 * 3600
    for bad in ("", "a,b", "-1"):
        with pytest.raises(ValueError):
            parse_schedule(bad)
