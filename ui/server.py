"""How the app is served: Gradio's features prefloop does not use are switched off, not hidden.

Each line here closes something an outside review reached on a live server (issue 12):

- Run history (``run_history=False``): Gradio 6 otherwise keeps every event's inputs in the
  browser's localStorage (``gradio:run-history:v2:<app>``), the sign-in password and session
  token included, and serves ``/gradio_api/runs``. Off, it records nothing, the page answers
  404, and runs an older version saved in the browser are deleted on the next visit.
- Deep links (route removed): ``/gradio_api/deep_link?session_hash=..`` saved any session's
  component values (the session token among them) to a file that ``/?deep_link=..`` served to
  anyone. Session hashes travel in URLs, so they reach proxy logs.
- Uploads (route removed, ``max_file_size=0``): the app has no file inputs, yet anyone could
  store files of any size through ``/gradio_api/upload`` and fetch them back.
- Gradio's temporary files go to ``<home>/gradio-tmp`` (0700), not a world-readable ``/tmp``.
- ``X-Forwarded-For`` is believed only from the proxies named with ``serve --trusted-proxy``
  (uvicorn's own check, told through ``FORWARDED_ALLOW_IPS``); by default from nobody, so a
  client cannot pick the address the sign-in limiter counts against.

Example:
    prepare_environment(home, trusted_proxies=["10.0.0.2"])
    demo.launch(**hardened_launch_options())
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from prefloop.errors import ServeError

CLOSED_ROUTES = ("/gradio_api/deep_link", "/gradio_api/upload")


class CloseUnusedRoutes:
    """ASGI middleware: 404 for Gradio routes prefloop never uses, before Gradio sees them.

    Gradio 6.31 has no switch for deep links or uploads, and its routes live in FastAPI's nested
    routers (whose internals change between releases), so they are refused here, by path, in
    front of every route of the same app.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            path = scope.get("path", "").rstrip("/")
            if any(path.endswith(closed) for closed in CLOSED_ROUTES):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send({"type": "http.response.start", "status": 404,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
                await send({"type": "http.response.body", "body": b"Not Found"})
                return
        await self.app(scope, receive, send)


def hardened_launch_options() -> dict[str, Any]:
    """``launch()`` options that switch off run history, uploads and deep links."""
    from starlette.middleware import Middleware

    return {
        "run_history": False,
        "max_file_size": 0,  # belt and braces: the multipart parsers refuse any file body
        "footer_links": ["api", "settings"],
        "app_kwargs": {"middleware": [Middleware(CloseUnusedRoutes)]},
    }


def prepare_environment(home: Path, trusted_proxies: Iterable[str] = ()) -> None:
    """Set what Gradio and uvicorn read from the environment when ``launch()`` starts them.

    Call right before ``launch()`` in the serving process (it sets this process's environment).
    """
    temp = Path(home) / "gradio-tmp"
    temp.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(temp, 0o700)
    os.environ["GRADIO_TEMP_DIR"] = str(temp)
    # uvicorn rewrites the client address from X-Forwarded-For only for peers listed here; an
    # empty list trusts no one (its default trusts loopback, so anything local could lie)
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(p.strip() for p in trusted_proxies if p.strip())


def port_error(host: str, port: int) -> ServeError:
    """The one line a second ``serve`` on a taken port prints."""
    return ServeError(f"cannot listen on {host}:{port}: the port is in use (another prefloop serve?) "
                      f"or not available; stop the other server or choose another --port")
