"""`python app.py --share` and `--auth`: the flags reach launch(), sharing without a login is
warned about, a login really guards the app (page and API), and the rate limits still apply.

The share tunnel itself needs the internet, which this machine does not have, so it is never
opened here: the flag handling is tested on `launch_options()` in a clean subprocess, and end
to end in the one setting where Gradio itself turns `share` off without any network call (a
Hugging Face Space, `SYSTEM=spaces`).
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
from gradio_client import Client

from tests.app_server import ROOT, AppServer
from tests.browser import (  # noqa: F401  (fixtures)
    INPUT,
    ChatPage,
    browser_fixture,
    context_factory,
    shot,
)

WARNING = "Sharing a public link without --auth"

# Prints, per argv, what launch_options() returns (share, auth) and what it logged.
PROBE = """
import json, logging, sys
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger().addHandler(Keep())
import app
results = []
for argv in json.loads(sys.argv[1]):
    records.clear()
    try:
        options = app.launch_options(app.parse_args(argv))
        results.append({"share": options["share"], "auth": options["auth"], "log": records[:]})
    except SystemExit as exc:
        results.append({"exit": str(exc)})
print("RESULTS " + json.dumps(results))
"""


def probe(argvs: list[list[str]], env: dict[str, str] | None = None) -> list[dict]:
    """Run launch_options() for each argv in a fresh `import app`, with AppServer's clean env."""
    server = AppServer(env)  # not started: used for its clean environment and directory
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=server.cwd,
        env={**server.env, "PYTHONPATH": str(ROOT)},
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULTS ")), None)
    assert line, f"probe failed:\n{out.stdout}\n{out.stderr}"
    return json.loads(line.removeprefix("RESULTS "))


@pytest.mark.e2e  # a fresh `import app` in a subprocess
def test_share_and_auth_flags_reach_the_launch_options():
    plain, shared, shared_with_auth, bad = probe(
        [[], ["--share"], ["--share", "--auth", "ann:correct-horse"], ["--auth", "no-colon"]]
    )
    assert plain["share"] is False and plain["auth"] is None
    assert not any(WARNING in line for line in plain["log"])

    assert shared["share"] is True and shared["auth"] is None
    warning = next(line for line in shared["log"] if WARNING in line)
    assert "--auth user:password" in warning, "the warning says what to do"

    assert shared_with_auth["share"] is True
    assert shared_with_auth["auth"] == [["ann", "correct-horse"]]
    assert not any(WARNING in line for line in shared_with_auth["log"])

    assert bad == {
        "exit": "--auth / APP_AUTH must be user:password pairs, comma-separated: "
        "pair 1 has no colon"
    }


@pytest.mark.e2e  # a fresh `import app` in a subprocess
def test_app_auth_variable_counts_as_a_login_for_sharing():
    (shared,) = probe([["--share"]], env={"APP_AUTH": "bob:battery-staple"})
    assert shared["share"] is True and shared["auth"] == [["bob", "battery-staple"]]
    assert not any(WARNING in line for line in shared["log"])


@pytest.mark.e2e  # launches the app
def test_share_flag_end_to_end_where_gradio_turns_it_off():
    """On a Space, Gradio itself refuses share=True without going online: so the real
    `python app.py --share` runs here, and both warnings reach the log."""
    env = {"SYSTEM": "spaces", "SPACE_ID": "tester/multimodal-chat"}
    with AppServer(env, args=["--share"]) as server:
        assert httpx.get(server.url + "gradio_api/info", timeout=10).status_code == 200
        log = server.log()
    assert WARNING in log, log
    assert "not supported on Hugging Face Spaces" in log, "launch() got share=True"
    # The one traceback allowed is Gradio's Spaces hot-reload thread, which needs HF's own
    # `spaces` package (installed on a real Space, not here); it does not stop the app.
    spaces_reloader = log.count("`spaces` package is required")
    assert log.count("Traceback") == spaces_reloader, log


@pytest.fixture(scope="module")
def guarded_app():
    """A login, and a low rate limit: what a shared link should run with."""
    env = {"RATE_LIMIT_PER_MINUTE": "3", "RATE_LIMIT_PER_IP_PER_MINUTE": "100"}
    with AppServer(env, args=["--auth", "ann:correct-horse"]) as server:
        yield server


def test_auth_guards_the_page_and_the_browser_logs_in(guarded_app, new_context):
    page = new_context().new_page()
    page.goto(guarded_app.url)
    page.wait_for_selector("input[type=password]")
    assert page.locator(INPUT).count() == 0, "no chat before the login"
    shot(page, "login-page")
    page.locator("input[data-testid=textbox]").fill("ann")
    page.locator("input[type=password]").fill("wrong-password")
    page.get_by_role("button", name="Login").click()
    page.get_by_text("Incorrect Credentials").wait_for()
    assert page.locator(INPUT).count() == 0

    page.locator("input[data-testid=textbox]").fill("ann")  # the form was cleared
    page.locator("input[type=password]").fill("correct-horse")
    page.get_by_role("button", name="Login").click()
    chat = ChatPage(page, guarded_app.url).wait_loaded()
    chat.send("Hello after the login")
    chat.wait_for_answer("Hello after the login")
    shot(page, "logged-in")


def test_auth_guards_the_api_and_the_rate_limit_still_applies(guarded_app):
    assert httpx.get(guarded_app.url + "gradio_api/info", timeout=10).status_code == 401
    with pytest.raises(Exception):  # noqa: B017 (gradio_client's own error types vary)
        Client(guarded_app.url, verbose=False)
    client = Client(guarded_app.url, auth=("ann", "correct-horse"), verbose=False)
    # An API caller is counted by its address: 3 messages a minute here, then refused.
    replies = []
    with pytest.raises(Exception, match="too fast") as refused:
        for number in range(10):
            replies.append(client.predict(message=f"message {number}", api_name="/chat"))
    assert len(replies) == 3, "three went through, then the limit stopped the fourth"
    assert "Traceback" not in str(refused.value)
