"""Issue 13, item 3: client addresses cannot be forged with X-Forwarded-For.

The attack: behind a proxy (the README used to suggest FORWARDED_ALLOW_IPS=*) uvicorn took
the LEFT-most X-Forwarded-For, so a client prepending a fake address per request got
unlimited turns (30/30 at a 3/min limit). Now the app reads the header itself, only from the
proxies it trusts, right-most first. The proxy here is simulated: requests come from loopback
(trusted by default, like a local nginx) and carry what nginx would send, `<whatever the
client wrote>, <the client's real address>`."""

from __future__ import annotations

import json

import httpx
import pytest
from gradio_client import Client

import client_address
from client_address import FailedLogins, ProxyTrust
from config import load_settings
from tests.app_server import AppServer


# -- the rule, unit by unit ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("trust", "peer", "forwarded", "client"),
    [
        # Loopback trusted (the default): the right-most entry our proxy appended.
        (ProxyTrust(), "127.0.0.1", ["6.6.6.6, 203.0.113.9"], "203.0.113.9"),
        (ProxyTrust(), "127.0.0.1", ["6.6.6.6", "203.0.113.9"], "203.0.113.9"),  # 2 lines
        (ProxyTrust(), "127.0.0.1", ["203.0.113.9:5555"], "203.0.113.9"),
        (ProxyTrust(), "::1", ["[2001:db8::7]:443"], "2001:db8::7"),
        (ProxyTrust(), "127.0.0.1", ["::ffff:203.0.113.9"], "203.0.113.9"),
        (ProxyTrust(), "127.0.0.1", [], "127.0.0.1"),  # a share link / local use: loopback
        (ProxyTrust(), "127.0.0.1", ["unknown"], "127.0.0.1"),  # junk: not an address
        (ProxyTrust(), "127.0.0.1", ["127.0.0.2, 127.0.0.1"], "127.0.0.2"),  # all ours
        # A peer we do not trust: its header is ignored.
        (ProxyTrust(), "198.51.100.1", ["6.6.6.6"], "198.51.100.1"),
        (ProxyTrust(()), "127.0.0.1", ["6.6.6.6"], "127.0.0.1"),
        # A chain of our proxies (10.0.0.0/8 and loopback): skipped from the right.
        (
            ProxyTrust(("10.0.0.0/8", "127.0.0.1")),
            "127.0.0.1",
            ["6.6.6.6, 203.0.113.9, 10.1.2.3"],
            "203.0.113.9",
        ),
        # Hops: that many proxies whatever their address (a Space: one).
        (ProxyTrust((), hops=1), "10.20.30.40", ["6.6.6.6, 203.0.113.9"], "203.0.113.9"),
        (ProxyTrust((), hops=2), "10.20.30.40", ["6.6.6.6, 203.0.113.9, 10.0.0.5"], "203.0.113.9"),
        (ProxyTrust((), hops=1), "10.20.30.40", [], "10.20.30.40"),
    ],
)
def test_the_client_is_the_right_most_untrusted_address(trust, peer, forwarded, client):
    assert trust.client(peer, forwarded) == client


def test_settings_defaults_and_the_space_default():
    local = load_settings({})
    assert local.trusted_proxies is None and local.trusted_proxy_hops == 0
    assert load_settings({"SPACE_ID": "user/space"}).trusted_proxy_hops == 1
    explicit = load_settings({"SPACE_ID": "user/space", "TRUSTED_PROXY_HOPS": "2"})
    assert explicit.trusted_proxy_hops == 2
    listed = load_settings({"TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.5,::1"})
    assert listed.trusted_proxies == ("10.0.0.0/8", "192.168.1.5/32", "::1/128")
    assert load_settings({"TRUSTED_PROXIES": "none"}).trusted_proxies == ()
    with pytest.raises(SystemExit, match="TRUSTED_PROXIES"):
        load_settings({"TRUSTED_PROXIES": "10.0.0.0/8,nginx"})


def test_a_share_link_trusts_no_proxy_unless_told():
    shared = client_address.configure(load_settings({}), share=True)
    assert shared.client("127.0.0.1", ["6.6.6.6"]) == "127.0.0.1"
    told = client_address.configure(load_settings({"TRUSTED_PROXIES": "127.0.0.1"}), share=True)
    assert told.client("127.0.0.1", ["6.6.6.6"]) == "6.6.6.6"
    client_address.configure(load_settings({}))


def test_failed_logins_window():
    now = [1000.0]
    table = FailedLogins(3, 60, clock=lambda: now[0])
    for _ in range(3):
        assert table.retry_after("a") == 0
        table.failed("a")
    assert table.retry_after("a") == 60 and table.retry_after("b") == 0
    now[0] += 30
    assert table.retry_after("a") == 30
    now[0] += 31
    assert table.retry_after("a") == 0
    small = FailedLogins(1, 60, max_addresses=2, clock=lambda: now[0])
    for address in ("x", "y", "z"):
        small.failed(address)
    assert small.retry_after("x") == 0 and small.retry_after("z") > 0  # oldest dropped


# -- the attack against the launched app ------------------------------------------------------
def post(app: AppServer, text: str, forwarded: str | None) -> int:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    body = {"messages": [{"role": "user", "content": text}]}
    response = httpx.post(app.url + "api/chat", json=body, headers=headers, timeout=30)
    return response.status_code


@pytest.fixture(scope="module")
def proxied_app():
    """Behind a local proxy (loopback trusted by default), with the README's old advice
    FORWARDED_ALLOW_IPS=* still set: it must be ignored."""
    env = {
        "RATE_LIMIT_PER_MINUTE": "10000",
        "RATE_LIMIT_PER_IP_PER_MINUTE": "3",
        "FORWARDED_ALLOW_IPS": "*",
    }
    with AppServer(env) as server:
        yield server


def test_prepending_fake_addresses_does_not_escape_the_per_ip_limit(proxied_app):
    statuses = [
        post(proxied_app, f"turn {n}", f"10.66.{n}.1, 203.0.113.10") for n in range(30)
    ]
    assert statuses.count(200) == 3 and statuses[3:] == [429] * 27
    # Another real client behind the same proxy is counted on its own.
    assert post(proxied_app, "someone else", "6.6.6.6, 203.0.113.11") == 200
    # A header split over two lines is one list: still the right-most.
    headers = [("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-For", "203.0.113.10")]
    body = json.dumps({"messages": [{"role": "user", "content": "two lines"}]})
    response = httpx.post(
        proxied_app.url + "api/chat",
        content=body,
        headers=[*headers, ("Content-Type", "application/json")],
        timeout=30,
    )
    assert response.status_code == 429
    log = proxied_app.log()
    assert "FORWARDED_ALLOW_IPS is ignored" in log and "TRUSTED_PROXIES" in log
    assert "WARNING" in next(line for line in log.splitlines() if "FORWARDED_ALLOW_IPS" in line)


def test_the_gradio_api_counts_the_real_client_too(proxied_app):
    forged = []
    with pytest.raises(Exception, match="too fast"):
        for n in range(10):
            client = Client(
                proxied_app.url,
                headers={"X-Forwarded-For": f"10.77.{n}.1, 203.0.113.20"},
                verbose=False,
            )
            forged.append(client.predict(message=f"via gradio {n}", api_name="/chat"))
    assert len(forged) == 3


@pytest.fixture(scope="module")
def direct_app():
    """No proxy trusted: X-Forwarded-For is the client's own word and ignored. Everything
    then comes from loopback, limited per client (the API caller's address) at 3/min."""
    env = {"TRUSTED_PROXIES": "none", "RATE_LIMIT_PER_MINUTE": "3"}
    with AppServer(env) as server:
        yield server


def test_without_a_trusted_proxy_the_header_is_ignored(direct_app):
    statuses = [post(direct_app, f"turn {n}", f"203.0.113.{n}") for n in range(6)]
    assert statuses == [200, 200, 200, 429, 429, 429]
    assert "X-Forwarded-For trusted from nobody" in direct_app.log()
