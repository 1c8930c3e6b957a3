"""Multimodal streaming chat on Gradio: the command line and the launch.

Run `python app.py` (see --help), `gradio app.py` for reload mode, or deploy as a Space.
The page is built by ui.build_demo; `demo` is module-level for Spaces and reload mode, built
on first use, so importing this module connects to nothing and reads no file.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from dataclasses import dataclass

import gradio as gr
from starlette.middleware import Middleware

import gradio_compat
import http_routes
import startup_checks
from accounts import parse_accounts
from api_arguments import FileArgumentCheck
from chat import ChatService
from config import Settings, load_settings, upload_dir
from http_guards import BodySizeLimit, SecurityHeaders, UnknownEndpoint, max_gradio_body_bytes
from providers import Providers
from ui import build_demo
from ui_api import IMAGES_HELP
from ui_assets import CSS, PAGE_JS
from ui_text import I18N
from upload_limits import UploadLimits

log = logging.getLogger("app")


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    service: ChatService


@functools.cache
def runtime() -> Runtime:
    """Settings (environment, then .env), the providers and the chat service: built once."""
    gradio_compat.configure_environment()  # before any Blocks, queue or session exists
    settings = load_settings()
    providers = Providers(
        timeout_s=settings.provider_timeout_s,
        connect_timeout_s=settings.provider_connect_timeout_s,
    )
    service = ChatService(settings, providers, image_dir=upload_dir() / "chat-images")
    return Runtime(settings, service)


@functools.cache
def get_demo() -> gr.Blocks:
    app = runtime()
    return build_demo(app.settings, app.service)


def __getattr__(name: str) -> object:
    """`demo` for Spaces and `gradio app.py`, built when first looked up."""
    if name == "demo":
        return get_demo()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Multimodal streaming chat (Gradio).")
    parser.add_argument(
        "--host",
        help="interface to bind (default 127.0.0.1, or GRADIO_SERVER_NAME; 0.0.0.0 for all)",
    )
    parser.add_argument("--port", type=int, help="port (default 7860, or GRADIO_SERVER_PORT)")
    parser.add_argument(
        "--share",
        action="store_true",
        help="also open a public *.gradio.live link (use with --auth)",
    )
    parser.add_argument(
        "--auth",
        help="require a login: user:password, or several pairs separated by commas "
        '("alice:pw1,bob:pw2"); each account has its own conversations (or set APP_AUTH)',
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="test every enabled provider (reachable, key, model, reply, image), print a "
        "table with fixes and exit: 0 when all passed, 1 otherwise",
    )
    return parser.parse_args(argv)


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    """The login accounts of --auth / APP_AUTH (one pair or several; accounts.py), or None
    for no login. A bad value stops the app with a message that shows no password."""
    try:
        accounts = parse_accounts(value)
    except ValueError as exc:
        raise SystemExit(
            f"--auth / APP_AUTH must be user:password pairs, comma-separated: {exc}"
        ) from None
    return accounts or None


def middleware(settings: Settings, service: ChatService, demo: gr.Blocks) -> list[Middleware]:
    """Around Gradio's app, outermost first: every page gets a CSP; failed logins are
    throttled per address and, with a login, POSTs from other sites refused
    (client_address.py); an unknown API name gets a 404, not a 500 and a traceback; API
    bodies are capped before they are read; /chat's images are checked before Gradio's
    generic error; uploads have per address, global and disk budgets (upload_limits.py)."""
    from client_address import CrossSiteGuard, LoginThrottle

    chat_index = gradio_compat.api_event(demo, "chat")
    return [
        Middleware(SecurityHeaders),
        Middleware(LoginThrottle),
        Middleware(CrossSiteGuard),
        Middleware(UnknownEndpoint, errors=gradio_compat.unknown_endpoint_errors()),
        Middleware(
            BodySizeLimit,
            max_bytes=max_gradio_body_bytes(settings.max_message_chars),
            checks=[
                FileArgumentCheck(
                    api_name="chat",
                    fn_index=chat_index,
                    position=1,
                    parameter="images",
                    message=IMAGES_HELP,
                )
            ],
        ),
        Middleware(
            UploadLimits,
            service=service,
            upload_dir=upload_dir(),
            max_disk_bytes=int(settings.max_upload_disk_mb * 1024 * 1024),
            max_age_s=settings.upload_max_age_hours * 3600,
            # a message's images in one request, plus the multipart overhead
            max_request_bytes=settings.max_images_per_message * settings.max_image_bytes
            + 1024 * 1024,
        ),
    ]


def launch_options(args: argparse.Namespace) -> dict:
    settings, service = runtime().settings, runtime().service
    auth = parse_auth(args.auth or settings.app_auth)
    if args.share and not auth:
        log.warning(
            "Sharing a public link without --auth: anyone with the link can use "
            "your API keys. Add --auth user:password."
        )
    return {
        "server_name": args.host,
        "server_port": args.port,
        "share": args.share,
        "auth": auth,
        "max_threads": settings.max_threads,
        # Plain HTTP routes (seed-compatible /api/chat, /health) beside Gradio's, same port.
        "app_kwargs": {
            "routes": http_routes.routes(service),
            "middleware": middleware(settings, service, get_demo()),
        },
        "enable_monitoring": False,
        # Gradio's run history would keep every call's inputs (a user's own API key among
        # them) in the browser's storage, and offers to copy them to a Hub bucket: off.
        "run_history": False,
        # In bytes: "0mb" from int(MAX_IMAGE_MB=0.5) would refuse every upload.
        "max_file_size": settings.max_image_bytes,
    }


def trust_client_addresses(args: argparse.Namespace) -> None:
    """Client addresses come from client_address.py (X-Forwarded-For only from the proxies
    in TRUSTED_PROXIES / TRUSTED_PROXY_HOPS, right-most first). Uvicorn's own rewrite is
    switched off through the setting it reads: told to trust `*` it takes the LEFT-most
    entry, which any client can forge."""
    import client_address

    if os.environ.get("FORWARDED_ALLOW_IPS", "").strip():
        log.warning(
            "FORWARDED_ALLOW_IPS is ignored: it let clients forge their address. Name the "
            "proxies in front in TRUSTED_PROXIES (IPs or networks; default loopback) or "
            "their number in TRUSTED_PROXY_HOPS."
        )
    os.environ["FORWARDED_ALLOW_IPS"] = ""
    trust = client_address.configure(runtime().settings, share=args.share)
    log.info("Client addresses: X-Forwarded-For trusted from %s", trust.describe())


def log_startup(settings: Settings, providers: Providers) -> None:
    if settings.redis_url:
        log.info("History: Redis")
    else:
        log.warning(
            "History: in memory (embedded fakeredis): conversations are lost on restart. "
            "Set REDIS_URL to keep them."
        )
    for warning in startup_checks.misconfigurations(settings, providers):
        log.warning(warning)
    log.info(
        "Providers enabled: %s (default %s)",
        ", ".join(p.id for p in providers.enabled()),
        providers.default_id,
    )


def main(argv: list[str] | None = None) -> int | None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request URL at INFO: provider URLs may carry credentials, and a line
    # per streamed request is noise next to our own one line per turn. openai's client logs
    # through httpx2, Gradio's own requests through httpx.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    args = parse_args(argv)
    settings, providers = runtime().settings, runtime().service.providers
    if args.check:  # before launch: the check prints its table and exits
        import check

        return check.cli(providers)
    trust_client_addresses(args)
    options = launch_options(args)
    log_startup(settings, providers)
    demo = get_demo()
    demo.queue(default_concurrency_limit=settings.concurrency_limit)
    demo.launch(
        theme=gr.themes.Default(primary_hue="indigo", secondary_hue="slate"),
        css=CSS,
        js=PAGE_JS,
        i18n=I18N,
        **options,
    )
    return None


if __name__ == "__main__":
    sys.exit(main())
