"""The app's modules can be imported for free, and the page is built by a factory.

Importing any module of the app connects to nothing and reads no file of ours (no .env, no
Redis, no prices file): only `load_settings()` reads .env, only `build_demo()` reads the
BrowserState secret, only launch listens.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.app_server import ROOT, AppServer

MODULES = sorted(p.stem for p in ROOT.glob("*.py"))

# Records every file opened and every socket connected to while the app's modules import.
PROBE = """
import json, os, sys
opened, connected = [], []
def audit(event, args):
    if event == "open" and isinstance(args[0], str):
        opened.append(args[0])
    elif event == "socket.connect":
        connected.append(repr(args[1]))
sys.addaudithook(audit)
for name in json.loads(sys.argv[1]):
    __import__(name)
prefixes = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
code = (".py", ".pyc", ".so", ".pth", ".json")
ours = [p for p in opened if not p.startswith(prefixes) and not p.endswith(code[:4])]
print("RESULT " + json.dumps({
    "files": ours, "connected": connected, "env_from_dotenv": os.environ.get("DEFAULT_PROVIDER"),
}))
"""


@pytest.mark.e2e  # subprocesses
def test_importing_every_module_reads_no_file_and_connects_to_nothing(tmp_path):
    (tmp_path / ".env").write_text("DEFAULT_PROVIDER=from-dotenv\n")
    env = {
        **AppServer().env,
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": "redis://127.0.0.1:9/0",  # a dead port: connecting would hang or fail
    }
    env.pop("DEFAULT_PROVIDER", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(MODULES)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert result["connected"] == []
    assert result["env_from_dotenv"] is None, ".env was read at import"
    assert [p for p in result["files"] if str(ROOT) in p or str(tmp_path) in p] == []


@pytest.mark.e2e  # a subprocess
def test_load_settings_reads_the_working_directorys_dotenv(tmp_path):
    (tmp_path / ".env").write_text("DEFAULT_PROVIDER=demo\nHISTORY_TTL_DAYS=3\n")
    probe = (
        "import json, config\n"
        "s = config.load_settings()\n"
        "print(json.dumps([s.default_provider, s.history_ttl_days]))\n"
    )
    env = {**AppServer().env, "PYTHONPATH": str(ROOT), "HISTORY_TTL_DAYS": "5"}
    env.pop("DEFAULT_PROVIDER", None)
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # .env fills what the environment lacks; the environment wins where both say something.
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["demo", 5]
