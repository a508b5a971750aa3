"""`cbam-tui watch RUN --web [HOST:]PORT`: the same dashboard in a browser, through textual-serve.

textual-serve starts one `cbam-tui watch RUN` per browser connection, with Textual's web
driver, and relays the page's keys and the app's screen over a websocket. This module
adds what a dashboard that steers a run needs before it is reachable from a network:

- It listens on 127.0.0.1 unless told otherwise. There it answers only to a loopback
  Host (a DNS-rebinding page cannot reach it through a name of its own).
- Any other address needs a random token, printed at start: every request (the page,
  its websocket, its static files) carries it in ``?token=`` or in the cookie the page
  sets, compared in constant time; one without it gets 403.
- The websocket, which no browser guards with CORS, is refused when the page that opens
  it came from another origin.

textual-serve is an optional extra (``pip install -e '.[web]'``); it and aiohttp are
imported only when serving, so ``--help`` and every other command stay as light.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import os
import re
import secrets
import shlex
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from core.errors import ConfigError

if TYPE_CHECKING:
    from aiohttp import web

    Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

DEFAULT_HOST = "127.0.0.1"
INSTALL_HINT = "pip install textual-serve (in a clone of cbam-tui: pip install -e '.[web]')"
TOKEN_PARAM = "token"
WEB_DRIVER = "textual.drivers.web_driver:WebDriver"  # what textual-serve puts in TEXTUAL_DRIVER
HOST_CHARS = re.compile(r"[A-Za-z0-9._\-:\[\]%]{1,255}")  # names, IPv4, bracketed IPv6 with a zone


@dataclass(frozen=True)
class Listen:
    """Where the server listens, as the user wrote it (HOST may be a name)."""

    host: str
    port: int  # 0: a free port the system chooses


def parse_listen(text: str) -> Listen:
    """``PORT``, ``HOST:PORT`` or ``[IPV6]:PORT``; the host defaults to 127.0.0.1."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"--web {text}: write an IPv6 address in brackets, as [::1]:8000")
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--web {text}: the port must be a number from 0 to 65535 (0: any free port)")
    if not HOST_CHARS.fullmatch(host):
        raise ConfigError(f"--web {text}: {host!r} is not a host name or address")
    return Listen(host, int(port))


def served() -> bool:
    """Whether this process's dashboard draws on a browser page (textual-serve started it)."""
    return os.environ.get("TEXTUAL_DRIVER") == WEB_DRIVER


def watch_command(run: Path) -> str:
    """The shell command textual-serve runs per connection: this Python, this cbam-tui,
    the run's absolute path quoted (a run's name is the user's; the shell must never read
    it as code). ``-P``: the server's working directory is not put on the module path.
    ``exec``: the shell becomes the dashboard, so the process the server waits for and
    kills is the dashboard itself, not a shell that would leave it behind."""
    return "exec " + shlex.join([sys.executable, "-P", "-m", "tui.cli", "watch", "--", str(run.absolute())])


def bind(listen: Listen) -> socket.socket:
    """A listening socket, or one sentence saying why there is none."""
    where = f"{listen.host}:{listen.port}" if ":" not in listen.host else f"[{listen.host}]:{listen.port}"
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--web {where}: cannot listen on {listen.host!r}: no such host ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT of a last server is no conflict
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"--web {where}: port {listen.port} is in use there; choose another port") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"--web {where}: {listen.host} is not an address of this machine") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"--web {where}: port {listen.port} needs privileges; choose one above 1023") from None
        raise ConfigError(f"--web {where}: cannot listen there: {exc.strerror}") from None
    return sock


def is_loopback(sock: socket.socket) -> bool:
    """Only this machine can connect (an IPv4-mapped loopback counts as not, the safe side)."""
    return ipaddress.ip_address(sock.getsockname()[0].split("%")[0]).is_loopback


def _host_of(netloc: str) -> str:
    """The host of a Host header or an origin's netloc, without port or brackets."""
    if netloc.startswith("["):
        return netloc[1 : netloc.find("]")] if "]" in netloc else ""
    return netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc


def loopback_name(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Gate:
    """Which requests the server answers. ``token`` None: it listens on loopback only."""

    token: str | None
    cookie: str  # the token's cookie name; it names the port, as a browser shares cookies across ports

    def refusal(self, host: str, origin: str | None, websocket: bool, given: list[str]) -> str | None:
        """Why a request is refused (sent with the 403), or None to answer it."""
        if not HOST_CHARS.fullmatch(host):
            return "bad Host header"
        if websocket and origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return "the page that opened this websocket came from another site"
        if self.token is None:
            if not loopback_name(_host_of(host)):
                return "this dashboard answers only to localhost, 127.0.0.1 or [::1]"
            return None
        expected = self.token.encode()
        # Every candidate is compared, so the time taken does not tell which one matched.
        matched = [hmac.compare_digest(candidate.encode(), expected) for candidate in given]
        if not any(matched):
            return "a token is needed: open the address printed when the server started"
        return None


REAP_S = 5.0  # how long a page's `watch` has to leave after its page went, before it is killed


def reaping(service: type) -> type:
    """textual-serve's AppService, made to wait for its `watch` process when it stops.

    textual-serve tells the process to quit and reads its output to the end, but never
    waits for it nor closes its stdin: the process's transport then outlives the server's
    event loop, and its finalizer prints a traceback at exit ("Event loop is closed").
    Here every stop waits (killing after REAP_S) and closes the pipe while the loop runs."""

    class ReapingAppService(service):  # type: ignore[misc]
        async def stop(self) -> None:
            try:
                await super().stop()
            finally:
                await self._reap()

        async def _reap(self) -> None:
            import asyncio

            process = self._process
            if process is None:
                return
            if process.stdin is not None:
                process.stdin.close()
            if process.returncode is None:
                try:
                    await asyncio.wait_for(asyncio.shield(process.wait()), REAP_S)
                except BaseException as why:  # it overstayed, or the server is stopping
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
                    if not isinstance(why, TimeoutError):
                        raise

    return ReapingAppService


def make_server(run: Path, gate: Gate) -> Any:
    """textual-serve's Server for ``run``, with every route behind ``gate``."""
    import aiohttp_jinja2
    import jinja2
    import textual_serve.app_service
    import textual_serve.server
    from aiohttp import web
    from textual_serve.server import Server

    # The server builds an AppService per websocket by this module-level name.
    textual_serve.server.AppService = reaping(textual_serve.app_service.AppService)  # type: ignore[attr-defined, assignment]

    class GuardedServer(Server):
        async def _make_app(self) -> web.Application:
            app = web.Application(middlewares=[guard])
            aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(self.templates_path), autoescape=True)
            # textual-serve's own table lists static directories and has a download route
            # the dashboard does not use: only the page, its websocket and its files.
            app.add_routes([
                web.get("/", self.handle_index, name="index"),
                web.get("/ws", self.handle_websocket, name="websocket"),
                web.static("/static", self.statics_path, show_index=False, name="static"),
            ])
            return app

        @aiohttp_jinja2.template("app_index.html")
        async def handle_index(self, request: web.Request) -> dict[str, Any]:
            # Addresses as the browser reached this server: through an SSH tunnel on
            # another port, the listening address would be the wrong one.
            scheme = "wss" if request.secure else "ws"
            size = request.query.get("fontsize", "")
            return {
                "font_size": min(max(int(size), 6), 64) if size.isdigit() else 16,
                "app_websocket_url": f"{scheme}://{request.host}/ws",
                "config": {"static": {"url": "/static/"}},
                "application": {"name": self.title},
            }

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = [v for v in (request.query.get(TOKEN_PARAM), request.cookies.get(gate.cookie)) if v is not None]
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        why = gate.refusal(request.host, request.headers.get("Origin"), websocket, given)
        if why is not None:
            raise web.HTTPForbidden(text=f"cbam-tui: {why}\n")
        response = await handler(request)
        if gate.token is not None and request.path == "/" and TOKEN_PARAM in request.query:
            # The page's files and websocket then carry the token without it in their URLs.
            response.set_cookie(gate.cookie, request.query[TOKEN_PARAM], httponly=True, samesite="Strict")
        return response

    return GuardedServer(watch_command(run), title=f"cbam-tui watch {run.name}")


def serve(run: Path, listen: Listen) -> int:
    """Serve the dashboard of ``run`` until Ctrl+C; the run itself goes on."""
    try:
        import textual_serve.server  # noqa: F401
        from aiohttp import web
    except ImportError:
        raise ConfigError(f"--web needs textual-serve: {INSTALL_HINT}") from None
    sock = bind(listen)
    port = sock.getsockname()[1]
    gate = Gate(None if is_loopback(sock) else secrets.token_urlsafe(24), f"cbam_tui_token_{port}")
    server = make_server(run, gate)
    shown = socket.gethostname() if listen.host in ("0.0.0.0", "::", "") else listen.host
    shown = f"[{shown}]" if ":" in shown else shown
    query = f"?{TOKEN_PARAM}={gate.token}" if gate.token else ""
    print(f"cbam-tui: the dashboard of {run} at http://{shown}:{port}/{query}", flush=True)
    if gate.token is None:
        print(f"cbam-tui: from another machine: ssh -L {port}:localhost:{port} THIS-HOST, then open "
              f"http://localhost:{port}/", flush=True)
    else:
        print("cbam-tui: every request needs that token; anyone who has the address can steer the run", flush=True)
    print("cbam-tui: Ctrl+C stops serving; the run goes on", flush=True)
    with contextlib.closing(sock):
        web.run_app(server._make_app(), sock=sock, print=None, access_log=None, handle_signals=True,
                    shutdown_timeout=5.0)
    return 0
