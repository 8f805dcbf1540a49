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
- Sessions live in an HttpOnly cookie (``prefloop_session``; ``SameSite=Strict``, ``Secure``
  over https). Sign-in and sign-out are two plain HTTP routes served here, in front of Gradio
  (``POST /prefloop/sign-in``, ``POST /prefloop/sign-out``): the password never travels in a
  Gradio event (so never in a queue payload, run history or deep link), and the token never
  sits where page scripts can read it (before: a ``gr.BrowserState`` encrypted with a key that
  Gradio ships to every visitor in ``/config``). Handlers read the token from the cookie of the
  request that carried the event (``with_session``), never from a component value.
- A request that a browser marks as coming from another origin (its ``Origin`` is not this
  host) is refused whatever its route: with ``SameSite=Strict`` this is the CSRF defence, and it
  also stops same-site neighbours (another port, a sibling subdomain) driving Gradio's API with
  the cookie, which Gradio's own CORS layer would allow.

Example:
    prepare_environment(home, trusted_proxies=["10.0.0.2"])
    demo.launch(**hardened_launch_options(store))
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

from prefloop.annotate import auth
from prefloop.db.store import Store
from prefloop.errors import AuthError, PrefloopError, ServeError

CLOSED_ROUTES = ("/gradio_api/deep_link", "/gradio_api/upload")
SESSION_COOKIE = "prefloop_session"
SIGN_IN_PATH = "/prefloop/sign-in"
SIGN_OUT_PATH = "/prefloop/sign-out"
# a name (256) and a password (1024), even JSON-escaped six bytes a character, fit in 16 KiB
MAX_SIGN_IN_BODY = 16_384
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


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


async def _answer(send, status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8",
                  headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"cache-control", b"no-store"),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


def same_origin(scope) -> bool:
    """Whether a request may act here: no foreign ``Origin``, and no ``Sec-Fetch-Site`` that says
    another site sent an unsafe method.

    Browsers send ``Origin`` on every POST and on cross-origin reads, so a page elsewhere is
    always named; scripts and tools (curl, gradio_client, bench/http_load.py) send none, and
    they are no CSRF risk: they hold their own cookie. "This host" is the ``Host`` header only:
    a reverse proxy must pass it through (nginx: ``proxy_set_header Host $host;``).
    ``X-Forwarded-Host`` is not believed: Gradio's CORS layer, in front of this one, answers
    preflights from any origin, so a neighbour's script could send that header to match its own
    ``Origin``.
    """
    from starlette.datastructures import Headers

    headers = Headers(scope=scope)
    origin = headers.get("origin")
    if origin is None:
        site = headers.get("sec-fetch-site")
        return scope.get("method", "GET") in SAFE_METHODS or site in (None, "same-origin", "none")
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False  # "null" (sandboxed frames, file pages) and anything odd
    host = headers.get("host", "").lower()
    return bool(host) and parts.netloc.lower() == host


class SameOriginOnly:
    """ASGI middleware: 403 for any request a browser sent from another origin (``same_origin``).

    With the session in a ``SameSite=Strict`` cookie, cross-site pages never send it; this also
    refuses same-site neighbours (another port on this host, a sibling subdomain), whose
    requests do carry the cookie and which Gradio's CORS layer would answer.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and not same_origin(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await _answer(send, 403, b"Forbidden: cross-origin request")
            return
        await self.app(scope, receive, send)


def _cookie_header(scope, token: str | None) -> tuple[bytes, bytes]:
    """Set-Cookie for the session: HttpOnly, SameSite=Strict, whole site; Secure over https."""
    from starlette.responses import Response

    response = Response()
    secure = scope.get("scheme") == "https"
    if token:
        response.set_cookie(SESSION_COOKIE, token, max_age=auth.SESSION_HOURS * 3600, path="/",
                            secure=secure, httponly=True, samesite="strict")
    else:
        response.delete_cookie(SESSION_COOKIE, path="/", secure=secure, httponly=True,
                               samesite="strict")
    return next((k, v) for k, v in response.raw_headers if k == b"set-cookie")


def _credentials(body: bytes, content_type: str) -> tuple[str, str]:
    """(name, password) from a JSON object or a urlencoded form; ValueError for anything else."""
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/json":
        fields = json.loads(body.decode("utf-8"))
        if not isinstance(fields, dict):
            raise ValueError("expected a JSON object")
        name, password = fields.get("name", ""), fields.get("password", "")
    elif kind == "application/x-www-form-urlencoded":
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=8)
        name, password = (fields.get("name") or [""])[0], (fields.get("password") or [""])[0]
    else:
        raise ValueError("send JSON or a urlencoded form")
    if not isinstance(name, str) or not isinstance(password, str):
        raise ValueError("name and password must be text")
    return name, password


class SessionRoutes:
    """ASGI middleware serving ``POST /prefloop/sign-in`` and ``POST /prefloop/sign-out``.

    Sign-in takes ``{"name", "password"}`` (JSON or a urlencoded form), checks it with
    ``auth.sign_in`` (Argon2, the limiter keyed by name and by client address, equal timing for
    unknown names) and answers ``{"ok", "message", "name", "role"}`` with the session cookie;
    a refusal is ``{"ok": false, "message"}`` with 401 (429 from the limiter), never a
    traceback. Sign-out ends the session on the server and clears the cookie.
    """

    def __init__(self, app, store: Store):
        self.app = app
        self.store = store

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "").rstrip("/") if scope["type"] == "http" else ""
        route = next((r for r in (SIGN_IN_PATH, SIGN_OUT_PATH) if path.endswith(r)), None)
        if route is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await _answer(send, 405, b"Method Not Allowed", headers=[(b"allow", b"POST")])
            return
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request

        request = Request(scope, receive)
        if route == SIGN_OUT_PATH:
            await run_in_threadpool(auth.sign_out, self.store, session_token(request))
            await self._reply(scope, send, 200, "Signed out.", token=None)
            return
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_SIGN_IN_BODY:
                await self._reply(scope, send, 413, "the sign-in form is too large")
                return
        try:
            name, password = _credentials(body, request.headers.get("content-type", ""))
        except (ValueError, UnicodeDecodeError):
            await self._reply(scope, send, 400, "send a name and a password (JSON or a form)")
            return
        client = scope["client"][0] if scope.get("client") else ""
        try:
            token, user = await run_in_threadpool(auth.sign_in, self.store, name, password, client)
        except auth.TooManySignIns as error:
            await self._reply(scope, send, 429, str(error))
            return
        except AuthError as error:
            await self._reply(scope, send, 401, str(error))
            return
        except PrefloopError as error:  # the database busy or refusing: a message, not a trace
            await self._reply(scope, send, 503, str(error))
            return
        # a browser that was signed in as someone else: that session ends here
        await run_in_threadpool(auth.sign_out, self.store, session_token(request))
        await self._reply(scope, send, 200, f"Signed in as {user['name']} ({user['role']}).",
                          token=token, extra={"name": user["name"], "role": user["role"]})

    @staticmethod
    async def _reply(scope, send, status: int, message: str, token: str | None = "",
                     extra: dict | None = None) -> None:
        """JSON ``{"ok", "message", ...}``; ``token`` sets the cookie, None clears it, "" leaves it."""
        body = json.dumps({"ok": status == 200, "message": message, **(extra or {})}).encode()
        headers = [] if token == "" else [_cookie_header(scope, token)]
        await _answer(send, status, body, b"application/json", headers)


# The page's half of the two routes. Paths are relative to the page, so a proxy's sub-path works.
# js_on_load of the sign-in form's gr.HTML (``element`` is the component): the password goes
# straight to the route with fetch, never into a Gradio event; on success the page reloads and
# its load event finds the cookie.
SIGN_IN_JS = """
element.addEventListener('submit', async (event) => {
  const form = event.target;
  if (!form || form.id !== 'pf-signin-form') return;
  event.preventDefault();
  const message = form.querySelector('#pf-signin-message');
  const button = form.querySelector('button[type=submit]');
  const field = (name) => form.elements.namedItem(name);
  button.disabled = true;
  message.textContent = 'Signing in…';
  try {
    const response = await fetch(form.getAttribute('action'), {
      method: 'POST', credentials: 'same-origin', cache: 'no-store',
      headers: {'Content-Type': 'application/json', 'Accept': 'application/json'},
      body: JSON.stringify({name: field('name').value, password: field('password').value}),
    });
    field('password').value = '';
    let answer = {};
    try { answer = await response.json(); } catch (error) { answer = {}; }
    if (response.ok) { message.textContent = answer.message || 'Signed in.'; window.location.reload(); return; }
    message.textContent = answer.message || ('Sign-in failed (' + response.status + ').');
  } catch (error) {
    message.textContent = 'The server did not answer; try again.';
  } finally {
    button.disabled = false;
  }
});
"""
# the Sign out button's js (no Python event): end the session on the server, then reload
SIGN_OUT_JS = """async () => {
  try {
    await fetch('%s', {method: 'POST', credentials: 'same-origin', cache: 'no-store'});
  } finally {
    window.location.reload();
  }
}""" % SIGN_OUT_PATH.lstrip("/")


def session_token(request) -> str | None:
    """The session token in a request's cookie: a Starlette request or Gradio's ``gr.Request``
    (which wraps the request that carried the event through the queue)."""
    from starlette.requests import HTTPConnection

    underlying = request if isinstance(request, HTTPConnection) else getattr(request, "request", None)
    if underlying is not None:
        cookies = underlying.cookies
    else:  # no request at all, or one Gradio pickled (its cookies kept as a dict)
        cookies = (getattr(request, "kwargs", None) or {}).get("cookies") or {}
    token = cookies.get(SESSION_COOKIE) if hasattr(cookies, "get") else None
    return token if isinstance(token, str) and token else None


def with_session(fn: Callable) -> Callable:
    """A Gradio handler from ``fn(token, *inputs)``: Gradio passes the event's ``gr.Request``
    first, and ``fn`` gets the session token from its cookie instead.

    The handler keeps ``fn``'s other parameters (so ``gr.Progress`` defaults still work) and
    stays a generator when ``fn`` is one (streamed outputs).

    Example: button.click(with_session(lambda token, pair: vote(store, token, pair, "left")), [pair_state], outputs)
    """
    import gradio as gr

    params = list(inspect.signature(fn).parameters.values())
    rest = params if params and params[0].kind is inspect.Parameter.VAR_POSITIONAL else params[1:]
    if inspect.isgeneratorfunction(fn):
        def handler(request, *inputs):
            yield from fn(session_token(request), *inputs)
    else:
        def handler(request, *inputs):
            return fn(session_token(request), *inputs)
    handler.__signature__ = inspect.Signature(
        [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD), *rest])
    handler.__annotations__ = {"request": gr.Request}
    handler.__name__ = getattr(fn, "__name__", "handler")
    return handler


def hardened_launch_options(store: Store) -> dict[str, Any]:
    """``launch()`` options that switch off run history, uploads and deep links, serve sign-in
    and sign-out for ``store``'s accounts, and refuse cross-origin requests."""
    from starlette.middleware import Middleware

    return {
        "run_history": False,
        "max_file_size": 0,  # belt and braces: the multipart parsers refuse any file body
        "footer_links": ["api", "settings"],
        "app_kwargs": {"middleware": [Middleware(SameOriginOnly), Middleware(CloseUnusedRoutes),
                                      Middleware(SessionRoutes, store=store)]},
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
