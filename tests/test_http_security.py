"""Issue 13, items 5 and 6, as attacks on the launched app: cross-site use of /api/chat (CSRF
with the login cookie), password guessing, huge and deep bodies, invalid Unicode in a message
or in an upstream chunk. Each attack must fail with a clear status and message; honest use
(curl with Basic auth, the app's own page with its cookie) must keep working."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from gradio_client import Client

from tests.app_server import AppServer
from tests.browser import browser_fixture, context_factory  # noqa: F401  (fixtures)
from tests.conftest import app_env
from tests.fake_upstream import Exchange
from tests.servers import free_port
from tests.test_http_api import LoginAppServer

PASSWORD = "wonder land"
JSON = {"Content-Type": "application/json"}


def user(text: str) -> dict:
    return {"messages": [{"role": "user", "content": text}]}


def sse_content(text: str) -> str:
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert not [e for e in events if "error" in e], events
    return "".join(e.get("content", "") for e in events)


@pytest.fixture(scope="module")
def login_app(redis_server, upstream):
    env = app_env(
        upstream,
        redis_server.url.replace("/0", "/5"),
        APP_AUTH=f"alice:{PASSWORD}",
        RATE_LIMIT_PER_MINUTE="10000",
    )
    with LoginAppServer(env) as server:
        yield server


@pytest.fixture(scope="module")
def open_app(redis_server, upstream):
    """No login. Per-IP limit 3 a minute (loopback is exempt from it: a test picks its own
    address with X-Forwarded-For, trusted from loopback by default); 2 MB request cap."""
    env = app_env(
        upstream,
        redis_server.url.replace("/0", "/6"),
        RATE_LIMIT_PER_MINUTE="10000",
        RATE_LIMIT_PER_IP_PER_MINUTE="3",
        MAX_REQUEST_MB="2",
    )
    with AppServer(env) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_upstream(upstream):
    upstream.reset()


def logged_in(app: AppServer) -> httpx.Client:
    """A "browser" holding the login cookie (Gradio's /login form, as the page does)."""
    client = httpx.Client(base_url=app.url, timeout=30)
    response = httpx.post(app.url + "login", data={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200, response.text
    client.cookies = response.cookies
    return client


def own_origin(app: AppServer) -> str:
    return app.url.rstrip("/")


# -- item 5: cross-site requests ---------------------------------------------------------------
def test_a_cross_site_form_cannot_run_a_turn_with_the_login_cookie(login_app, upstream):
    """The attack: a page elsewhere auto-submits a text/plain form whose body is JSON."""
    with logged_in(login_app) as browser:
        form_body = '{"messages": [{"role": "user", "content": "spend the victim\'s turn"}]}'
        for headers in (
            {"Content-Type": "text/plain", "Origin": "http://evil.example"},
            {"Content-Type": "text/plain"},  # no Origin at all (an old browser, a redirect)
            {"Content-Type": "text/plain", "Origin": "null"},  # a sandboxed frame
        ):
            refused = browser.post("api/chat", content=form_body, headers=headers)
            assert refused.status_code == 403, (headers, refused.text)
            assert refused.json()["error"]["code"] == "cross_origin"
            assert "another site" in refused.json()["error"]["message"]
        # JSON itself (a fetch with credentials: Gradio's CORS lets any origin preflight).
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": own_origin(login_app) + ".evil.example"},
            {"Referer": "http://evil.example/page.html"},
            {},
        ):
            refused = browser.post("api/chat", json=user("hi"), headers=headers)
            assert refused.status_code == 403, (headers, refused.text)
        # The same page's own form (same origin) is still not JSON: 415, not a turn.
        form = browser.post(
            "api/chat",
            content=form_body,
            headers={"Content-Type": "text/plain", "Origin": own_origin(login_app)},
        )
        assert form.status_code == 415 and form.json()["error"]["code"] == "unsupported_media_type"
        assert "Content-Type: application/json" in form.json()["error"]["message"]
        assert upstream.requests == [], "no turn ran"

        # Honest use: the app's own page (Origin, or only a same-origin Referer).
        for headers in (
            {"Origin": own_origin(login_app)},
            {"Referer": login_app.url + "?view=chat"},
            {"Origin": own_origin(login_app), "Content-Type": "application/json; charset=utf-8"},
        ):
            answer = browser.post("api/chat", json=user("from my page"), headers=headers)
            assert answer.status_code == 200, (headers, answer.text)
            assert sse_content(answer.text) == "Echo: from my page"


def chat_call_body(app: AppServer, text: str, cookies=None) -> str:
    """A /gradio_api/call/chat body with every parameter (defaults from /gradio_api/info)."""
    info = httpx.get(app.url + "gradio_api/info", cookies=cookies, timeout=10).json()
    params = info["named_endpoints"]["/chat"]["parameters"]
    values = {p["parameter_name"]: p.get("parameter_default") for p in params}
    values.update(message=text, provider="openai")
    return json.dumps({"data": list(values.values())})


def test_another_site_cannot_drive_the_gradio_queue_with_the_login_cookie(login_app, upstream):
    """Gradio's CORS lets any origin send credentialed requests to a public host: a page
    elsewhere could call the queue (or any POST) with a visitor's cookie."""
    with logged_in(login_app) as browser:
        body = chat_call_body(login_app, "csrf via the queue", browser.cookies)
        for path in ("gradio_api/call/chat", "gradio_api/queue/join", "gradio_api/upload"):
            refused = browser.post(
                path, content=body, headers={**JSON, "Origin": "http://evil.example"}
            )
            assert refused.status_code == 403, (path, refused.text)
            assert refused.json()["error"]["code"] == "cross_origin"
        assert upstream.requests == []
        # The app's own page, and gradio_client / curl (no Origin), still work.
        for headers in ({"Origin": own_origin(login_app)}, {}):
            headers = {**JSON, **headers}
            started = browser.post("gradio_api/call/chat", content=body, headers=headers)
            assert started.status_code == 200, started.text
            result = browser.get(f"gradio_api/call/chat/{started.json()['event_id']}").text
            assert "event: complete" in result and "Echo: csrf via the queue" in result
    client = Client(login_app.url, auth=("alice", PASSWORD), verbose=False)
    assert client.predict(message="client", provider="openai", api_name="/chat")[0]


def test_curl_with_basic_auth_needs_no_origin_but_a_foreign_one_is_refused(login_app):
    url = login_app.url + "api/chat"
    auth = ("alice", PASSWORD)
    answer = httpx.post(url, json=user("curl"), auth=auth, timeout=30)
    assert answer.status_code == 200 and sse_content(answer.text) == "Echo: curl"
    # A browser replaying cached Basic credentials from another site.
    foreign = httpx.post(
        url, json=user("x"), auth=auth, headers={"Origin": "http://evil.example"}, timeout=30
    )
    assert foreign.status_code == 403
    not_json = httpx.post(url, content="hi", auth=auth, timeout=30)
    assert not_json.status_code == 415
    assert httpx.post(url, json=user("x"), timeout=30).status_code == 401


def test_the_origin_may_be_the_public_host_behind_a_trusted_proxy(login_app):
    """nginx on this host passes Host as the internal address and X-Forwarded-Host public."""
    public = {"X-Forwarded-Host": "chat.example.com", "X-Forwarded-For": "203.0.113.50"}
    with logged_in(login_app) as browser:
        answer = browser.post(
            "api/chat",
            json=user("via nginx"),
            headers={**public, "Origin": "https://chat.example.com"},
        )
        assert answer.status_code == 200 and sse_content(answer.text) == "Echo: via nginx"
        spoofed = browser.post(
            "api/chat",
            json=user("x"),
            headers={"X-Forwarded-Host": "evil.example", "Origin": "http://other.example"},
        )
        assert spoofed.status_code == 403
        # A proxy that sets neither Host nor X-Forwarded-Host to the public name: the
        # browser's own Sec-Fetch-Site still tells the app's page from another site.
        public_origin = {"Origin": "https://chat.example.com"}
        for site, status in (("same-origin", 200), ("same-site", 403), ("cross-site", 403)):
            headers = {**public_origin, "Sec-Fetch-Site": site}
            answer = browser.post("api/chat", json=user("via a plain proxy"), headers=headers)
            assert answer.status_code == status, (site, answer.text)
            queue = browser.post("gradio_api/queue/join", content="{}", headers={**JSON, **headers})
            assert (queue.status_code == 403) == (status == 403), (site, queue.text)


def test_no_login_app_takes_only_json(open_app, upstream):
    url = open_app.url + "api/chat"
    form = httpx.post(url, content=json.dumps(user("x")), headers={"Content-Type": "text/plain"})
    assert form.status_code == 415
    urlencoded = httpx.post(url, data={"messages": "x"})
    assert urlencoded.status_code == 415
    missing = httpx.post(url, content=json.dumps(user("x")))
    assert missing.status_code == 415
    assert upstream.requests == []
    answer = httpx.post(url, json=user("plain curl"), timeout=30)  # no Origin: fine
    assert answer.status_code == 200 and sse_content(answer.text) == "Echo: plain curl"


def test_the_page_may_be_framed_only_by_itself_and_hugging_face(open_app):
    policy = httpx.get(open_app.url, timeout=10).headers["content-security-policy"]
    frame = next(p.strip() for p in policy.split(";") if "frame-ancestors" in p)
    assert frame == "frame-ancestors 'self' https://huggingface.co https://*.hf.space"


# -- item 5: password guessing ---------------------------------------------------------------
def login_attempt(app: AppServer, password: str, address: str) -> httpx.Response:
    return httpx.post(
        app.url + "login",
        data={"username": "alice", "password": password},
        headers={"X-Forwarded-For": address},
        timeout=10,
    )


def test_password_guessing_on_the_login_form_is_throttled(login_app):
    attacker = "198.51.100.21"
    statuses = [login_attempt(login_app, f"guess-{n}", attacker).status_code for n in range(60)]
    assert statuses[:10] == [400] * 10, "ten wrong passwords are answered"
    assert set(statuses[10:]) == {429}, "then every attempt is refused unread"
    blocked = login_attempt(login_app, PASSWORD, attacker)  # even the right one, for now
    assert blocked.status_code == 429
    wait = int(blocked.headers["retry-after"])
    assert 1 <= wait <= 300
    assert f"wait {wait} s" in blocked.json()["detail"]
    assert "Too many failed logins" in blocked.json()["error"]["message"]
    # Someone else (another address behind the same proxy) logs in as usual.
    assert login_attempt(login_app, PASSWORD, "198.51.100.22").status_code == 200
    # Prepending a fake address changes nothing: the right-most one is the client.
    forged = login_attempt(login_app, "guess", f"10.9.8.7, {attacker}")
    assert forged.status_code == 429


def test_basic_auth_failures_on_the_api_count_as_failed_logins(login_app):
    attacker = "198.51.100.31"
    url = login_app.url + "api/chat"
    headers = {"X-Forwarded-For": attacker}
    statuses = [
        httpx.post(url, json=user("x"), auth=("alice", f"guess{n}"), headers=headers).status_code
        for n in range(15)
    ]
    assert statuses == [401] * 10 + [429] * 5
    refused = httpx.post(url, json=user("x"), auth=("alice", PASSWORD), headers=headers)
    assert refused.status_code == 429 and refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "rate_limited"
    # The same table as the login form.
    assert login_attempt(login_app, PASSWORD, attacker).status_code == 429
    honest = {"X-Forwarded-For": "198.51.100.32"}
    answer = httpx.post(url, json=user("ok"), auth=("alice", PASSWORD), headers=honest)
    assert answer.status_code == 200


# -- item 6: huge bodies -----------------------------------------------------------------------
def rss_kb(app: AppServer) -> int:
    status = open(f"/proc/{app.proc.pid}/status").read()  # noqa: SIM115
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))


def raw_request(app: AppServer, head: str, body_chunks, *, chunked: bool = False) -> bytes:
    """Send a request by hand, and stop sending as soon as the server has answered (or no
    longer reads). Returns the raw response: status line, headers, body."""
    sock = socket.create_connection(("127.0.0.1", app.port), timeout=20)
    try:
        sock.sendall(head.encode())
        for chunk in body_chunks:
            if select.select([sock], [], [], 0.2)[0]:
                break  # answered before the body was sent
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            except OSError:  # closed, reset, or no longer reading (the timeout)
                break
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            answer += data
            head_end = answer.find(b"\r\n\r\n")
            if head_end > 0 and answer.rstrip().endswith(b"}"):
                break
        return answer
    finally:
        sock.close()


def chat_head(app: AppServer, extra: str) -> str:
    return (
        f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\n"
        f"Content-Type: application/json\r\n{extra}\r\n"
    )


def test_a_300_mb_declared_body_is_refused_before_it_is_read(open_app):
    """Only the first kilobyte is ever sent: an answer can only come from the header (a
    server waiting for the body would leave the socket silent until its timeout)."""
    before = rss_kb(open_app)
    answers = []

    def attack() -> None:
        head = chat_head(open_app, f"Content-Length: {300 * 1024 * 1024}\r\n")
        answers.append(raw_request(open_app, head, [b'{"messages": "' + b"x" * 1024]))

    attackers = [threading.Thread(target=attack) for _ in range(4)]
    for thread in attackers:
        thread.start()
    for thread in attackers:
        thread.join(timeout=60)
    assert len(answers) == 4
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "payload_too_large"
        assert "larger than 2 MB" in body["error"]["message"]
    # Answered from the header: the 1.2 GB offered never reached memory, and a chunked
    # body (no length declared) is cut off at the cap while it streams in.
    head = chat_head(open_app, "Transfer-Encoding: chunked\r\n")
    megabyte = b"y" * (1024 * 1024)
    for _ in range(4):
        answer = raw_request(open_app, head, [b'{"messages": "'] + [megabyte] * 300, chunked=True)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert rss_kb(open_app) - before < 100 * 1024


def test_a_chunked_body_is_cut_off_at_the_cap(open_app):
    head = chat_head(open_app, "Transfer-Encoding: chunked\r\n")
    chunks = [b'{"messages": "'] + [b"y" * (256 * 1024)] * 400  # 100 MB unless stopped
    answer = raw_request(open_app, head, chunks, chunked=True)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"payload_too_large" in answer
    # The Gradio API's JSON bodies too (their cap is the message limit's worth).
    head = head.replace("/api/chat", "/gradio_api/call/chat")
    answer = raw_request(open_app, head, chunks, chunked=True)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # Within the cap a normal request still works.
    small = httpx.post(open_app.url + "api/chat", json=user("small"), timeout=30)
    assert small.status_code == 200 and sse_content(small.text) == "Echo: small"


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_deeply_nested_json_is_a_clear_400_everywhere(open_app, upstream):
    api = httpx.post(
        open_app.url + "api/chat",
        content='{"messages": ' + deep(100_000) + "}",
        headers=JSON,
        timeout=30,
    )
    assert api.status_code == 400 and api.json()["error"]["code"] == "nested_too_deeply"
    assert "nested too deeply" in api.json()["error"]["message"]
    unbalanced = httpx.post(
        open_app.url + "api/chat", content="[" * 100_000, headers=JSON, timeout=30
    )
    assert unbalanced.status_code == 400
    # Gradio's own API bodies: the queue and the REST-like call route.
    for path, body in (
        ("gradio_api/queue/join", '{"data": ' + deep(100_000) + ', "fn_index": 0}'),
        ("gradio_api/call/chat", '{"data": ' + deep(100_000) + "}"),
        ("gradio_api/call/chat", '{"data": [' + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "]}"),
    ):
        answer = httpx.post(open_app.url + path, content=body, headers=JSON, timeout=30)
        assert answer.status_code == 400, (path, answer.status_code, answer.text[:200])
        assert "nested too deeply" in answer.json()["error"]
    # Brackets inside strings are text, not nesting.
    brackets = httpx.post(open_app.url + "api/chat", json=user("[" * 5000), timeout=30)
    assert brackets.status_code == 200 and sse_content(brackets.text) == "Echo: " + "[" * 5000
    assert "Traceback" not in open_app.log()
    assert len(upstream.requests) == 1


# -- item 6: invalid Unicode -------------------------------------------------------------------
def test_a_lone_surrogate_in_a_message_is_replaced_not_a_500(open_app, upstream):
    url = open_app.url + "api/chat"
    escaped = b'{"messages": [{"role": "user", "content": "bad \\ud800 char"}]}'
    answer = httpx.post(url, content=escaped, headers=JSON, timeout=30)
    assert answer.status_code == 200, answer.text
    assert sse_content(answer.text) == "Echo: bad \ufffd char"
    assert upstream.requests[-1]["messages"][-1]["content"] == "bad \ufffd char"
    # Raw invalid UTF-8 bytes (an unpaired surrogate encoded directly), in a conversation.
    raw = b'{"conversation_id": "new", "messages": [{"role": "user", "content": "x\xed\xa0\x80y"}]}'
    stored = httpx.post(url, content=raw, headers=JSON, timeout=30)
    assert stored.status_code == 200 and "x\ufffd" in sse_content(stored.text)
    cid = stored.headers["x-conversation-id"]
    history = Client(open_app.url, verbose=False).predict(conversation_id=cid, api_name="/history")
    assert history[0]["content"].startswith("x\ufffd") and history[1]["status"] == "complete"
    # Valid escapes (a surrogate pair, an escaped backslash) are left alone.
    valid = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00 \\\\ud800"}]}'
    answer = httpx.post(url, content=valid, headers=JSON, timeout=30)
    assert sse_content(answer.text) == "Echo: \U0001f600 \\ud800"
    assert "Traceback" not in open_app.log()


def test_a_lone_surrogate_through_the_gradio_api(open_app, upstream):
    """gradio_client cannot even send one (httpx refuses to encode it): a raw call can."""
    body = chat_call_body(open_app, "MESSAGE").replace("MESSAGE", "bad \\udc00 char").encode()
    started = httpx.post(open_app.url + "gradio_api/call/chat", content=body, headers=JSON)
    assert started.status_code == 200, started.text
    event_id = started.json()["event_id"]
    result = httpx.get(open_app.url + f"gradio_api/call/chat/{event_id}", timeout=30).text
    assert "event: complete" in result and "event: error" not in result, result[-500:]
    assert upstream.requests[-1]["messages"][-1]["content"] == "bad \ufffd char"
    assert "Traceback" not in open_app.log()


def test_invalid_requests_do_not_use_up_the_rate_limit(open_app):
    """The per-IP limit is 3 a minute: refused requests of every kind must not count."""
    url = open_app.url + "api/chat"
    headers = {**JSON, "X-Forwarded-For": "198.51.100.41"}
    for body in (
        b"not json",
        b'{"messages": ' + deep(5000).encode() + b"}",
        b'{"messages": []}',
        b'{"messages": [{"role": "user", "content": "   "}]}',
    ):
        refused = httpx.post(url, content=body, headers=headers, timeout=30)
        assert refused.status_code in (400, 422), refused.text
    plain = {"Content-Type": "text/plain", "X-Forwarded-For": "198.51.100.41"}
    assert httpx.post(url, content=b"{}", headers=plain).status_code == 415
    surrogate = b'{"messages": [{"role": "user", "content": "\\ud800"}]}'
    statuses = [
        httpx.post(url, content=surrogate, headers=headers, timeout=30).status_code
        for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]


def broken_unicode_reply(ex: Exchange) -> None:
    """An upstream answer with invalid UTF-8 bytes in one chunk and a JSON-escaped lone
    surrogate in another."""
    ex.start_stream()
    ex.send_delta({"role": "assistant", "content": "Before "})
    ex.send_raw(b'data: {"choices": [{"index": 0, "delta": {"content": "b\xed\xa0\x80d "}}]}\n\n')
    ex.send_raw('data: {"choices": [{"index": 0, "delta": {"content": "e\\ud800s "}}]}\n\n')
    ex.send_delta({"content": "after."}, finish="stop")
    ex.end_stream()


def test_invalid_unicode_from_the_upstream_keeps_the_stream_and_the_turn(open_app, upstream):
    upstream.script(broken_unicode_reply)
    body = {**user("tell me"), "conversation_id": "new"}
    answer = httpx.post(open_app.url + "api/chat", json=body, timeout=30)
    assert answer.status_code == 200
    assert answer.text.endswith("data: [DONE]\n\n")
    content = sse_content(answer.text)  # no error event
    assert content == "Before b\ufffd\ufffd\ufffdd e\ufffds after."
    cid = answer.headers["x-conversation-id"]
    history = Client(open_app.url, verbose=False).predict(conversation_id=cid, api_name="/history")
    assert history[1]["content"] == content and history[1]["status"] == "complete"
    # The UI's path too (gradio_client /chat).
    upstream.script(broken_unicode_reply)
    reply, _ = Client(open_app.url, verbose=False).predict(
        message="again", provider="openai", api_name="/chat"
    )
    assert "b\ufffd\ufffd\ufffdd e\ufffds after." in reply
    assert "Traceback" not in open_app.log()


# -- item 5 in a real browser: the attacker's page on another origin -------------------------
class _EvilPage(BaseHTTPRequestHandler):
    pages: dict[str, bytes] = {}

    def do_GET(self) -> None:
        html = self.pages.get(self.path, b"")
        self.send_response(200 if html else 404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(html)))
        self.end_headers()
        self.wfile.write(html)

    def log_message(self, *args) -> None:
        pass


def test_a_cross_site_page_in_chromium_cannot_chat_as_the_victim(login_app, upstream, new_context):
    target = login_app.url + "api/chat"
    # The classic: a form posting text/plain whose body reads as JSON, submitted on load.
    _EvilPage.pages["/form"] = f"""<!doctype html><html><body>
<form id="f" method="POST" action="{target}" enctype="text/plain">
<input name='{{"messages": [{{"role": "user", "content": "csrf", "x": "' value='"}}]}}'>
</form><script>document.getElementById("f").submit();</script></body></html>""".encode()
    # And a credentialed fetch with JSON (Gradio's CORS answers the preflight).
    _EvilPage.pages["/fetch"] = f"""<!doctype html><html><body><script>
fetch("{target}", {{method: "POST", credentials: "include",
  headers: {{"Content-Type": "application/json"}},
  body: JSON.stringify({{messages: [{{role: "user", content: "csrf fetch"}}]}})}})
  .then(r => {{ document.title = "fetch " + r.status; }})
  .catch(e => {{ document.title = "fetch blocked"; }});
</script></body></html>""".encode()
    evil = ThreadingHTTPServer(("127.0.0.1", free_port()), _EvilPage)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    evil_url = f"http://127.0.0.1:{evil.server_address[1]}"  # same site, another origin
    try:
        context = new_context()
        page = context.new_page()
        page.goto(login_app.url)  # the victim logs in on the app's own page
        page.locator("input[data-testid=textbox]").fill("alice")
        page.locator("input[type=password]").fill(PASSWORD)
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#chat-input")
        assert any("access-token" in c["name"] for c in context.cookies())

        attack = context.new_page()
        with attack.expect_navigation(url=target):
            attack.goto(evil_url + "/form")
        # The cookie was sent (else this would be a 401), and refused by its origin.
        refusal = json.loads(attack.locator("body").inner_text())
        assert refusal["error"]["code"] == "cross_origin", refusal

        attack.goto(evil_url + "/fetch")
        attack.wait_for_function("document.title.startsWith('fetch')")
        assert attack.title() in ("fetch 403", "fetch blocked"), attack.title()
        assert upstream.requests == [], "no turn ran on the victim's account"
    finally:
        evil.shutdown()
        evil.server_close()


def test_many_large_bodies_at_once_cannot_take_the_memory(open_app):
    """Each body under the 2 MB cap, but held open in parallel: past four caps' worth the
    next one is refused (503, retry later) instead of being read into memory too."""
    size = 2 * 1024 * 1024 - 4096
    sent = int(size * 0.95)
    head = chat_head(open_app, f"Content-Length: {size}\r\n").encode()
    holders = []
    try:
        for _ in range(4):  # each sends 95% of its body and waits: the server holds it
            sock = socket.create_connection(("127.0.0.1", open_app.port), timeout=30)
            sock.sendall(head + b'{"messages": "' + b"x" * (sent - 14))
            holders.append(sock)
        time.sleep(1.0)  # let the server read what was sent
        late = socket.create_connection(("127.0.0.1", open_app.port), timeout=30)
        try:
            late.sendall(head)
            with contextlib.suppress(OSError):  # the server may answer and close mid-send
                late.sendall(b'{"messages": "' + b"x" * (sent - 14))
            answer = b""
            while not answer.rstrip().endswith(b"}"):  # headers and body may come apart
                piece = late.recv(65536)
                if not piece:
                    break
                answer += piece
        finally:
            late.close()
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"too many large requests" in answer and b"retry-after: 5" in answer.lower()
    finally:
        for sock in holders:
            sock.close()
    time.sleep(0.5)  # the abandoned bodies give their bytes back
    small = httpx.post(open_app.url + "api/chat", json=user("after"), timeout=30)
    assert small.status_code == 200 and sse_content(small.text) == "Echo: after"
