"""Conversations per signed-in account (issue 15, item 10): APP_AUTH with several accounts,
the account id, who a request is signed in as; then the launched app with two accounts,
through gradio_client and in Chromium (several browser contexts = several browsers).

Without a login the list stays per browser: test_browser.py's
test_two_browsers_never_see_each_others_conversations covers that (not repeated here).
Hugging Face sign-in cannot be reached from here: its part that runs locally (the profile
as Gradio hands it over, the button's switch) is tested; docs/deployment.md says the rest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import gradio as gr
import httpx
import pytest
import redis
from gradio_client import Client

import app as app_module
from accounts import account_browser_id, hf_oauth_enabled, parse_accounts, signed_in
from history import is_valid_id
from tests.app_server import AppServer
from tests.browser import ChatPage, browser_fixture, context_factory  # noqa: F401  (fixtures)
from tests.conftest import app_env
from tests.fake_upstream import FakeUpstream

DB = 14  # this module's database on the private redis-server
ACCOUNTS = "alice:pw1,bob:pw2"
NO_LINK = "That link names a conversation this browser does not have."


# -- parse_accounts ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, []),
        ("", []),
        ("alice:pw1", [("alice", "pw1")]),
        ("alice:pw1,bob:pw2", [("alice", "pw1"), ("bob", "pw2")]),
        ("alice:pw1, bob:pw2 ,carol:pw3", [("alice", "pw1"), ("bob", "pw2"), ("carol", "pw3")]),
        ("alice:pw1 bob:pw2", [("alice", "pw1"), ("bob", "pw2")]),
        ("alice:pw1\nbob:pw2\r\n\n", [("alice", "pw1"), ("bob", "pw2")]),
        ("alice:pw1,\n  bob:pw2", [("alice", "pw1"), ("bob", "pw2")]),
        # the FIRST colon splits: a password may hold colons
        ("alice:a:b:c,bob::x", [("alice", "a:b:c"), ("bob", ":x")]),
        # the one-pair form of before, with a space in the password, is still one pair
        ("alice:wonder land", [("alice", "wonder land")]),
        ("alice:wonder land,bob:pw2", [("alice", "wonder land"), ("bob", "pw2")]),
    ],
)
def test_parse_accounts(value, expected):
    assert parse_accounts(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("s3cret-pass", "pair 1 has no colon"),
        ("alice:pw1,s3cret-pass", "pair 2 has no colon"),
        (":s3cret-pass", "pair 1 has an empty user name"),
        ("alice:pw1,bob:", "user 'bob' has an empty password"),
        ("alice:s3cret-pass,alice:other-s3cret", "user 'alice' is listed twice"),
        ("alice:s3cret pass bob:x", "cannot tell where a password with spaces ends"),
    ],
)
def test_parse_accounts_refuses_without_showing_a_password(value, message):
    with pytest.raises(ValueError) as caught:
        parse_accounts(value)
    assert str(caught.value).startswith(message)
    assert "s3cret" not in str(caught.value) and "pw1" not in str(caught.value)


def test_the_command_line_takes_several_accounts_and_stops_on_a_bad_one():
    assert app_module.parse_auth(ACCOUNTS) == [("alice", "pw1"), ("bob", "pw2")]
    assert app_module.parse_auth("ann:correct-horse") == [("ann", "correct-horse")]
    assert app_module.parse_auth(None) is None and app_module.parse_auth(" ,\n") is None
    with pytest.raises(SystemExit) as stopped:
        app_module.parse_auth("alice:pw1,bob:s3cret,bob:other")
    assert str(stopped.value).startswith("--auth / APP_AUTH must be user:password pairs")
    assert "bob" in str(stopped.value) and "s3cret" not in str(stopped.value)


# -- account_browser_id ------------------------------------------------------------------------
def test_the_account_id_is_an_hmac_of_kind_and_user_under_the_secret():
    first = account_browser_id("the-secret", "password", "alice")
    expected = hmac.new(b"the-secret", b"account:password:alice", hashlib.sha256).hexdigest()
    assert first == expected[:32]
    assert is_valid_id(first), "the shape of every other browser id: 32 lowercase hex"
    assert account_browser_id("the-secret", "password", "alice") == first, "stable"
    others = {
        account_browser_id("the-secret", "hf", "alice"),  # the same name, another kind
        account_browser_id("the-secret", "password", "bob"),
        account_browser_id("another-secret", "password", "alice"),
        account_browser_id("the-secret", "password", "Alice"),
    }
    assert first not in others and len(others) == 4


@pytest.mark.parametrize(
    ("secret", "kind", "username"),
    [("s", "google", "alice"), ("s", "password", ""), ("", "password", "alice")],
)
def test_the_account_id_needs_a_known_kind_a_user_and_a_secret(secret, kind, username):
    with pytest.raises(ValueError):
        account_browser_id(secret, kind, username)


# -- signed_in ---------------------------------------------------------------------------------
def hf_profile(username: str, **claims: str) -> gr.OAuthProfile:
    """A profile as Gradio builds it from the session's OpenID userinfo."""
    return gr.OAuthProfile(
        {
            "name": username.title(),
            "preferred_username": username,
            "profile": f"https://huggingface.co/{username}",
            "picture": "",
            **claims,
        }
    )


def test_signed_in_names_the_account_or_nobody():
    assert signed_in(None, None) is None
    assert signed_in(gr.Request(), None) is None, "no login: per browser"
    assert signed_in(gr.Request(username="alice"), None) == ("password", "alice")
    ann = hf_profile("ann", sub="64f0c0ffee64f0c0ffee64f0")
    # The Hub account's permanent id, not its (changeable) user name; OAuth wins.
    assert signed_in(gr.Request(username="alice"), ann) == ("hf", "64f0c0ffee64f0c0ffee64f0")
    assert signed_in(None, hf_profile("ann")) == ("hf", "ann"), "no sub: the user name"


def test_hf_sign_in_is_on_where_the_space_set_its_client_id(monkeypatch):
    monkeypatch.delenv("OAUTH_CLIENT_ID", raising=False)
    assert hf_oauth_enabled() is False
    monkeypatch.setenv("OAUTH_CLIENT_ID", " ")
    assert hf_oauth_enabled() is False
    monkeypatch.setenv("OAUTH_CLIENT_ID", "0123-client")
    assert hf_oauth_enabled() is True


# -- the launched app with two accounts ------------------------------------------------------
@pytest.fixture(scope="module")
def redis_db(redis_server) -> str:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


def accounts_env(upstream: FakeUpstream, redis_url: str) -> dict[str, str]:
    return app_env(upstream, redis_url, APP_AUTH=ACCOUNTS, RATE_LIMIT_PER_MINUTE="1000")


@pytest.fixture(scope="module")
def app(redis_db, upstream):
    with AppServer(accounts_env(upstream, redis_db)) as server:
        yield server


def test_each_account_logs_in_with_gradio_client(app):
    for user, password in (("alice", "pw1"), ("bob", "pw2")):
        client = Client(app.url, auth=(user, password), verbose=False)
        reply, cid = client.predict(message=f"hello from {user}", api_name="/chat")
        assert reply == f"Echo: hello from {user}" and is_valid_id(cid)
        client.close()
    for wrong in (("alice", "pw2"), ("carol", "pw1")):
        with pytest.raises(Exception, match="(?i)credentials|401|login"):
            Client(app.url, auth=wrong, verbose=False)
    assert httpx.get(app.url + "gradio_api/info", timeout=10).status_code == 401


def log_in(context, url: str, user: str, password: str) -> ChatPage:
    """Gradio's login form, as a person fills it in; then the chat page, loaded."""
    page = context.pages[0] if context.pages else context.new_page()
    page.goto(url)
    page.locator("input[data-testid=textbox]").fill(user)
    page.locator("input[type=password]").fill(password)
    page.get_by_role("button", name="Login").click()
    return ChatPage(page, url).wait_loaded()


def conversation_in_address(chat: ChatPage) -> str:
    chat.page.wait_for_function("() => new URLSearchParams(location.search).get('c')")
    return chat.page.evaluate("() => new URLSearchParams(location.search).get('c')")


def test_an_account_has_the_same_list_in_every_browser_and_never_anothers(
    app, redis_db, new_context
):
    alice_a = log_in(new_context(), app.url, "alice", "pw1")
    assert alice_a.page.get_by_role("button", name="Sign in with Hugging Face").count() == 0
    alice_a.send("Alice's plan, typed in browser A")
    alice_a.wait_for_answer("Echo: Alice's plan, typed in browser A")
    assert alice_a.wait_titles("t => t.length === 1") == ["Alice's plan, typed in browser A"]
    alices_chat = conversation_in_address(alice_a)
    # Her list is keyed by the id derived under the server's own key, not under the
    # BrowserState secret, which every signed-in page gets in /config.
    store = redis.Redis.from_url(redis_db, decode_responses=True)
    page_secret, key = store.get("chat:app_secret"), store.get("chat:account-ids:app_secret")
    assert page_secret and page_secret in alice_a.page.request.get(app.url + "config").text()
    assert key and key != page_secret
    assert store.exists(f"chat:browser:{account_browser_id(key, 'password', 'alice')}:convs")
    from_page = account_browser_id(page_secret, "password", "alice")
    assert not store.keys(f"chat:browser:{from_page}:*")

    # Browser B, the same account: the same list, and the conversation opens there.
    alice_b = log_in(new_context(), app.url, "alice", "pw1")
    assert alice_b.titles() == ["Alice's plan, typed in browser A"]
    alice_b.open_conversation("Alice's plan")
    alice_b.wait_for_answer("Echo: Alice's plan, typed in browser A")

    # Browser C, another account: nothing of Alice's, not even through her link.
    bob = log_in(new_context(), app.url, "bob", "pw2")
    assert bob.titles() == []
    bob.page.goto(f"{app.url}?c={alices_chat}")
    bob.wait_loaded()
    assert NO_LINK in bob.toast()
    assert "Alice" not in bob.chat_text() and bob.titles() == []
    bob.send("Bob's list")
    assert bob.wait_titles("t => t.length === 1") == ["Bob's list"]
    alice_b.reload()
    assert alice_b.titles() == ["Alice's plan, typed in browser A"]

    # Browser C again, after Bob logs out and Alice logs in: the account's id wins over the
    # one this browser kept, and Bob's chat is not shown to her.
    bob.page.goto(app.url + "logout?all_session=false")
    alice_c = log_in(bob.page.context, app.url, "alice", "pw1")
    assert alice_c.titles() == ["Alice's plan, typed in browser A"]
    assert "Bob" not in alice_c.chat_text()


def test_a_replica_on_the_same_redis_shows_the_account_the_same_list(
    app, redis_db, upstream, new_context
):
    """Another app process (a restart, a second replica) derives the same account ids: the
    secret comes from Redis like the BrowserState's."""
    first = log_in(new_context(), app.url, "bob", "pw2")
    first.send("Bob, before the replica")
    titles = first.wait_titles("t => t.includes('Bob, before the replica')")
    with AppServer(accounts_env(upstream, redis_db)) as replica:
        again = log_in(new_context(), replica.url, "bob", "pw2")
        assert again.titles() == titles


# -- Sign in with Hugging Face, as far as it runs here ------------------------------------------
OAUTH_SECRET = "test-oauth-client-secret"


@pytest.fixture(scope="module")
def hub_app(redis_server):
    """The app as a Space with `hf_oauth: true` runs it: Gradio's real OAuth routes and session
    middleware (SYSTEM=spaces and the variables the Hub sets). The provider URL is never
    reached: the sign-in's end result, the session, is made by the test."""
    pytest.importorskip("authlib", reason="Gradio's oauth extra (pip install gradio[oauth])")
    env = app_env(
        None,
        redis_server.url.rsplit("/", 1)[0] + f"/{DB + 1}",
        SYSTEM="spaces",
        SPACE_ID="tester/multimodal-chat",
        OAUTH_CLIENT_ID="test-client-id",
        OAUTH_CLIENT_SECRET=OAUTH_SECRET,
        OAUTH_SCOPES="openid profile",
        OPENID_PROVIDER_URL="http://127.0.0.1:9",
        RATE_LIMIT_PER_MINUTE="1000",
    )
    with AppServer(env) as server:
        yield server


def hub_session(username: str, sub: str) -> str:
    """The `session` cookie Gradio's /login/callback leaves after a Hub sign-in: Starlette's
    SessionMiddleware format (base64 JSON, itsdangerous-signed under the key Gradio derives
    from OAUTH_CLIENT_SECRET), holding the OpenID userinfo."""
    from itsdangerous import TimestampSigner

    info = {
        "access_token": "not-a-real-token",
        "scope": "openid profile",
        "expires_at": int(time.time()) + 3600,
        "userinfo": {
            "sub": sub,
            "name": username.title(),
            "preferred_username": username,
            "profile": f"https://huggingface.co/{username}",
            "picture": "",
        },
    }
    data = base64.b64encode(json.dumps({"oauth_info": info}).encode())
    signer = TimestampSigner(hashlib.sha256(f"{OAUTH_SECRET}-v4".encode()).hexdigest())
    return signer.sign(data).decode()


def hub_browser(new_context, app: AppServer, username: str | None, sub: str = "") -> ChatPage:
    """A browser signed in to the Hub as `username` (None: not signed in). The cookie is set
    without `Secure`: Gradio's own is Secure, which Chromium refuses over plain http."""
    context = new_context()
    if username:
        cookie = {"name": "session", "value": hub_session(username, sub), "url": app.url}
        context.add_cookies([cookie])
    return ChatPage(context.new_page(), app.url).open()


def test_a_hub_account_has_its_own_list_in_every_browser(hub_app, new_context):
    ann = hub_browser(new_context, hub_app, "ann", sub="64f0c0ffee64f0c0ffee0001")
    assert ann.page.get_by_role("button", name="Logout (ann)").is_visible()
    ann.send("Ann's notes, signed in with the Hub")
    assert ann.wait_titles("t => t.length === 1") == ["Ann's notes, signed in with the Hub"]

    again = hub_browser(new_context, hub_app, "ann", sub="64f0c0ffee64f0c0ffee0001")
    assert again.titles() == ["Ann's notes, signed in with the Hub"]
    # Another Hub account, and the same user name with another `sub` (renamed, then taken).
    for other in (("ben", "64f0c0ffee64f0c0ffee0002"), ("ann", "64f0c0ffee64f0c0ffee0003")):
        assert hub_browser(new_context, hub_app, *other).titles() == []
    stranger = hub_browser(new_context, hub_app, None)
    assert stranger.page.get_by_role("button", name="Sign in with Hugging Face").is_visible()
    assert stranger.titles() == [], "not signed in: this browser's own (empty) list"


def test_signing_out_of_the_hub_leaves_nothing_of_the_account_in_that_browser(hub_app, new_context):
    """A shared computer: after the Hub sign-out, the next visitor of that browser (its
    localStorage still holding the account's id) sees an empty list, not the account's."""
    ann = hub_browser(new_context, hub_app, "ann", sub="64f0c0ffee64f0c0ffee0009")
    ann.send("Private notes of ann")
    assert ann.wait_titles("t => t.length === 1") == ["Private notes of ann"]
    ann.page.context.clear_cookies()  # what the sign-out does to the session
    ann.reload()
    assert ann.titles() == [], "the account's list is gone from this signed-out browser"
    ann.send("A visitor's own chat")
    assert ann.wait_titles("t => t.length === 1") == ["A visitor's own chat"]
