"""The HTTP side of 'ppmtrack label' and 'ppmtrack review': a small Starlette app and the uvicorn server.

It serves the static page (``static/``), the frames of the videos the session holds (by number, never by
path), the session's JSON, and the files of the output folder (resolved and checked to stay inside it). When
bound to anything but loopback, every request needs the random token printed in the URL (``?token=``; the
page then keeps it in a cookie). On loopback, requests must name a loopback host (no DNS rebinding). Requests
that change anything must send JSON, which other web sites open in the same browser cannot do without the
server's consent (a CORS preflight, never granted).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import secrets
import socket
from pathlib import Path

from ppmtrack.engine.errors import MissingExtraError, PpmtrackError
from ppmtrack.pipelines.labels import LabelsError
from ppmtrack.pipelines.web.sessions import LabelSession, ReviewSession, StaleWriteError, WebInputError

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 16 * 1024 * 1024
"""The largest request body accepted (a labels document of ~50 000 frames × 20 keypoints); more is refused (413)."""


class ServeError(PpmtrackError, OSError):
    """The page cannot be served (the port is taken or not allowed)."""


TOKEN_COOKIE = "ppmtrack_token"
UI_EXTRA_HINT = "the browser app needs the ui extra: pip install 'ppmtrack[ui]'"
logger = logging.getLogger("ppmtrack")


def require_ui() -> None:
    """Raise an ImportError that says how to install the ui extra when Starlette or uvicorn is missing."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingExtraError(f"{UI_EXTRA_HINT} ({e.name} is missing)") from None


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]"]


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 before it is read into memory, whether
    it declares its length (Content-Length) or not (chunked)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BaseException as exc:  # raised in a task group, _TooLarge may come wrapped in an exception group
            if not _holds(exc, _TooLarge):
                raise
            if not started:
                await self._refuse(send)

    async def _refuse(self, send):
        body = f"request body over {self.limit // (1024 * 1024)} MB refused".encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def _holds(exc: BaseException, kind: type) -> bool:
    """True if ``exc`` is a ``kind``, or an exception group holding one."""
    return isinstance(exc, kind) or any(_holds(e, kind) for e in getattr(exc, "exceptions", ()))


async def json_body(request):
    """The request's JSON document; malformed or too deeply nested JSON is a WebInputError (400), not a crash."""
    import json

    body = await request.body()
    try:
        return json.loads(body)
    except RecursionError:
        raise WebInputError("the JSON document is nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WebInputError(f"not a JSON document ({e})") from None


def create_app(session: LabelSession | ReviewSession, token: str | None = None,
               allowed_hosts: list[str] | None = None):
    """The Starlette application for a label or review session.

    ``token`` (if any) is required on every request; ``allowed_hosts`` (if any) are the only Host headers
    accepted.
    """
    require_ui()
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    page = "label.html" if isinstance(session, LabelSession) else "review.html"

    async def check_request(request, call_next):
        if request.method not in ("GET", "HEAD") and \
                not request.headers.get("content-type", "").startswith("application/json"):
            return PlainTextResponse("send JSON (Content-Type: application/json)", 415)
        if token is None:
            return await call_next(request)
        given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            return PlainTextResponse("forbidden: open the URL with the token that 'ppmtrack' printed", 403)
        response = await call_next(request)
        if "token" in request.query_params:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    def errors(handler):
        async def wrapped(request):
            try:
                return await handler(request)
            except StaleWriteError as e:
                return JSONResponse({"error": " ".join(str(e).split()), "conflict": True}, 409)
            except (WebInputError, LabelsError, ValueError, OSError, RecursionError) as e:
                return JSONResponse({"error": " ".join(str(e).split())}, 400)
        return wrapped

    async def index(request):
        return RedirectResponse(f"/static/{page}")

    async def state(request):
        return JSONResponse(await asyncio.to_thread(session.document))

    async def frame(request):
        vid, index = request.path_params["video"], request.path_params["frame"]
        videos = session.videos if isinstance(session, LabelSession) else [session.video]
        if vid >= len(videos) or index >= videos[vid].n_frames:
            return PlainTextResponse("no such frame", 404)
        try:
            data = await asyncio.to_thread(videos[vid].jpeg, index)
        except IndexError as e:  # a frame of a damaged file that does not decode
            return PlainTextResponse(str(e), 404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @errors
    async def save_labels(request):
        doc = await json_body(request)
        if not isinstance(doc, dict) or "revision" not in doc:
            return JSONResponse({"error": "send the labels' revision (from /api/state or the last save) so that "
                                          "a stale page cannot overwrite newer labels"}, 428)
        return JSONResponse(await asyncio.to_thread(session.update, doc))

    @errors
    async def proposals(request):
        from ppmtrack.pipelines.frame_selection import propose_frames

        vid = request.path_params["video"]
        if vid >= len(session.videos):
            return PlainTextResponse("no such video", 404)
        suggested = (getattr(session, "suggested", None) or {}).get(vid)
        if suggested:  # ppmtrack label --frames-from: a run's outlier frames come first
            return JSONResponse({"frames": suggested, "source": "outlier frames of the run"})
        n = int(request.query_params.get("n", 20))
        if not 1 <= n <= 1000:
            raise WebInputError("n must be between 1 and 1000")
        return JSONResponse({"frames": await asyncio.to_thread(propose_frames, session.videos[vid], n)})

    @errors
    async def suggest(request):  # label propagation (pipelines.propagate.LabelProposer)
        doc = await request.json()
        frames = doc.get("frames") if isinstance(doc, dict) else None
        return JSONResponse(await asyncio.to_thread(session.proposer.suggest, session,
                                                    request.path_params["video"], frames))

    @errors
    async def export_dlc(request):
        doc = await json_body(request)
        if not isinstance(doc, dict) or not isinstance(doc.get("scorer", ""), str):
            raise WebInputError("expected {scorer: NAME}")
        return JSONResponse({"written": await asyncio.to_thread(session.export_dlc, doc.get("scorer", ""))})

    @errors
    async def add_support(request):
        return JSONResponse(await asyncio.to_thread(session.add_support_frame, await json_body(request)))

    @errors
    async def tracks(request):
        try:
            start, stop = int(request.query_params["start"]), int(request.query_params["stop"])
        except (KeyError, ValueError):
            raise WebInputError("expected /api/tracks?start=FRAME&stop=FRAME") from None
        return JSONResponse(await asyncio.to_thread(session.tracks_page, start, stop))

    @errors
    async def adapt(request):
        if request.method == "POST":
            return JSONResponse(await asyncio.to_thread(session.start_adapt))
        return JSONResponse(session.adapt_status())

    async def result_file(request):
        root = session.results.resolve()
        try:
            path = (root / request.path_params["path"]).resolve()
            found = path.is_relative_to(root) and path.is_file()
        except (ValueError, OSError):  # a NUL byte, a name too long, ...
            return PlainTextResponse("bad file name", 400)
        if not found:
            return PlainTextResponse("not found", 404)
        return FileResponse(path)

    routes = [
        Route("/", index),
        Route("/api/state", state),
        Route("/api/video/{video:int}/frame/{frame:int}.jpg", frame),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    if isinstance(session, LabelSession):
        routes += [Route("/api/labels", save_labels, methods=["PUT"]),
                   Route("/api/video/{video:int}/proposals", proposals),
                   Route("/api/export-dlc", export_dlc, methods=["POST"])]
        if getattr(session, "proposer", None) is not None:  # ppmtrack label --model
            routes.append(Route("/api/video/{video:int}/suggest", suggest, methods=["POST"]))
    else:
        routes += [Route("/api/support", add_support, methods=["POST"]),
                   Route("/api/tracks", tracks),
                   Route("/api/adapt", adapt, methods=["GET", "POST"]),
                   Route("/results/{path:path}", result_file)]
    middleware = [Middleware(BodyLimit)]
    middleware += [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    middleware.append(Middleware(BaseHTTPMiddleware, dispatch=check_request))
    return Starlette(routes=routes, middleware=middleware)


def serve(session: LabelSession | ReviewSession, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve a session until Ctrl-C; prints the URL to open (with a token when not bound to loopback).

    ``port`` 0 picks a free port. An address that cannot be bound is an OSError naming it.
    """
    require_ui()
    import uvicorn

    token = None if is_loopback(host) else secrets.token_urlsafe(24)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # connections made once the URL is printed wait for the server instead of failing
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    bound = sock.getsockname()[1]
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
    print(f"open {url} in a browser (Ctrl-C to stop)", flush=True)
    if token:
        print("ppmtrack: the page is reachable from other machines; anyone with this URL can edit the files",
              flush=True)
    app = create_app(session, token, allowed_hosts=None if token else LOOPBACK_HOSTS)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        session.close()
