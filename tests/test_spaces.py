"""Hugging Face Spaces readiness: README front matter a Gradio Space accepts, requirements that
install everything the app imports, the deploy steps documented, and the app as a Space runs
it (`python app.py`, `SYSTEM=spaces`, no Redis): the embedded store, said plainly in the UI.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib

import httpx
import pytest
import yaml
from gradio_client import Client
from packaging.requirements import Requirement

from providers import Providers
from tests.app_server import ROOT, AppServer
from tests.browser import ChatPage, browser_fixture, context_factory  # noqa: F401  (fixtures)

# The Hub's rules for the README's YAML block (its configuration reference, and the Hub's
# push-time check that refuses a short_description over 60 characters).
COLOURS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
SDKS = {"gradio", "streamlit", "docker", "static"}
# Every provider key variable (from the registry itself, so a new preset is checked too).
PROVIDER_KEYS = [p.key_env for p in Providers({}).all() if p.key_env]


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def front_matter() -> dict:
    match = re.match(r"---\n(.*?)\n---\n", readme(), re.S)
    assert match, "README.md must start with a --- YAML block --- (the Space's settings)"
    return yaml.safe_load(match.group(1))


def requirements() -> dict[str, Requirement]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    reqs = [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]
    return {canonical(r.name): r for r in reqs}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def section(title: str) -> str:
    """The README text under a `## title` heading, up to the next `## `."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", readme(), re.M | re.S)
    assert match, f"README.md needs a '## {title}' section (text in notes_browser.md)"
    return match.group(1)


def test_front_matter_is_a_valid_gradio_space():
    meta = front_matter()
    assert meta["sdk"] in SDKS and meta["sdk"] == "gradio"
    assert isinstance(meta["title"], str) and meta["title"].strip()
    assert meta["colorFrom"] in COLOURS and meta["colorTo"] in COLOURS
    assert isinstance(meta["emoji"], str) and len(meta["emoji"]) <= 2
    assert isinstance(meta.get("pinned", False), bool)
    assert len(meta.get("short_description", "")) <= 60, "the Hub refuses a longer one"
    app_file = ROOT / meta["app_file"]
    assert app_file.is_file()
    source = app_file.read_text(encoding="utf-8")
    assert 'if __name__ == "__main__":' in source, "Spaces runs `python app.py`"


@pytest.mark.e2e  # a fresh `import app` in a subprocess
def test_importing_the_app_connects_to_nothing_and_demo_is_module_level():
    """`import app` reads no Redis (here: a dead port, which would fail the build at once);
    `app.demo` (what Spaces and `gradio app.py` look up) is the page, built on first use."""
    probe = (
        "import app, gradio as gr, sys\n"
        "assert 'demo' not in vars(app), 'built at import'\n"
        "try:\n"
        "    app.demo\n"
        "except SystemExit as exc:\n"
        "    print('BUILD', exc)\n"
    )
    env = {**AppServer().env, "REDIS_URL": "redis://127.0.0.1:9/0", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # Only looking `demo` up reached Redis (the BrowserState secret is kept there).
    assert "BUILD" in out.stdout and "Redis" in out.stdout, out.stdout
    built = subprocess.run(
        [sys.executable, "-c", "import app, gradio as gr; assert isinstance(app.demo, gr.Blocks)"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**AppServer().env, "PYTHONPATH": str(ROOT)},
    )
    assert built.returncode == 0, built.stderr[-2000:]


def test_sdk_version_is_within_the_gradio_range_and_tested():
    """Spaces installs sdk_version; requirements.txt allows a range of one major (security
    fixes need no code change); gradio_compat names the versions the suite ran on."""
    import gradio_compat

    meta = front_matter()
    pin = requirements()["gradio"]
    assert meta["sdk_version"] in pin.specifier, (pin, meta["sdk_version"])
    assert str(pin.specifier) in (">=6.31,<7", "<7,>=6.31"), pin.specifier
    assert meta["sdk_version"] in gradio_compat.TESTED


def test_python_version_is_a_quoted_version_the_code_runs_on():
    meta = front_matter()
    version = meta["python_version"]
    # Unquoted, YAML reads 3.10 as the number 3.1: the Space would build the wrong Python.
    assert isinstance(version, str) and re.fullmatch(r"3\.\d+(\.\d+)?", version), version
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["target-version"]
    minor = int(version.split(".")[1])
    assert minor >= int(target.removeprefix("py3")), f"the code targets {target}"


def app_modules() -> list[str]:
    return [p.stem for p in ROOT.glob("*.py")]


def third_party_imports() -> set[str]:
    local = set(app_modules())
    names: set[str] = set()
    for module in app_modules():
        tree = ast.parse((ROOT / f"{module}.py").read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in local}


def installed_closure(names: set[str]) -> set[str]:
    """The distributions that installing `names` brings (their dependencies, recursively)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def test_requirements_install_everything_the_app_imports():
    """A Space runs `pip install -r requirements.txt` and nothing else (no dev requirements)."""
    provided = installed_closure(set(requirements()))
    by_module = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(third_party_imports()):
        dists = {canonical(d) for d in by_module.get(module, [])}
        if not dists & provided:
            missing[module] = sorted(dists) or "not installed"
    assert not missing, f"imported by the app but not installed by requirements.txt: {missing}"


def test_readme_has_the_deploy_to_spaces_steps():
    text = section("Deploy to Spaces")
    for needed in ("hf auth login", "hf repos create", "--space-sdk gradio", "hf upload"):
        assert needed in text, needed
    assert '--exclude ".env"' in text, "a developer's .env (their keys) must never be uploaded"
    assert "Variables and secrets" in text and "secret" in text.lower()
    assert "REDIS_URL" in text and "APP_SECRET" in text and "APP_AUTH" in text
    assert "in memory" in text, "what happens with no Redis on a Space"
    documented = readme()
    assert all(key in documented for key in PROVIDER_KEYS), "every provider's key is named"


def test_readme_has_the_share_link_section():
    text = section("Share link")
    assert "--share" in text and "--auth" in text and "APP_AUTH" in text
    assert "rate limit" in text.lower()


def test_readme_shows_both_screenshots():
    text = readme()
    for name in ("docs/screenshot.png", "docs/screenshot-mobile.png"):
        assert f"]({name})" in text or f'src="{name}"' in text, name
        assert (ROOT / name).stat().st_size > 10_000, f"{name} is a real screenshot"


# -- the app as a Space runs it ---------------------------------------------------------------
@pytest.fixture(scope="module")
def space_app():
    """What Spaces sets (SYSTEM, SPACE_ID) and no REDIS_URL: nobody configured a Redis."""
    env = {"SYSTEM": "spaces", "SPACE_ID": "tester/multimodal-chat"}
    with AppServer(env) as server:
        yield server


def test_without_redis_a_space_uses_the_embedded_store_and_says_so(space_app, new_context):
    assert "History: in memory" in space_app.log()
    chat = ChatPage(new_context().new_page(), space_app.url).open()
    status = chat.page.locator("#status").inner_text()
    assert "in memory" in status and "REDIS_URL" in status
    chat.send("Hello, Space")
    chat.wait_for_answer("Hello, Space")
    assert chat.wait_titles("t => t.length === 1") == ["Hello, Space"]


def test_a_space_serves_the_public_api(space_app):
    client = Client(space_app.url, verbose=False)
    reply, cid = client.predict(message="ping from the API", api_name="/chat")
    assert "ping from the API" in reply and len(cid) == 32
    assert httpx.get(space_app.url + "health", timeout=10).status_code == 200
