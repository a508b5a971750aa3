"""`watch RUN --web`: the listen address, its errors, the per-connection command, and the
guard in front of every route, with plain HTTP requests to the real server (no browser;
tests/e2e/test_web_browser.py drives one)."""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.helpers import fake_run
from tui.web import Gate, Listen, parse_listen, watch_command


def test_a_listen_address_is_a_port_or_host_and_port() -> None:
    assert parse_listen("8000") == Listen("127.0.0.1", 8000)  # loopback unless told otherwise
    assert parse_listen("0.0.0.0:8001") == Listen("0.0.0.0", 8001)
    assert parse_listen("[::1]:8002") == Listen("::1", 8002)
    assert parse_listen("localhost:0") == Listen("localhost", 0)


@pytest.mark.parametrize(("given", "said"), [
    ("70000", "the port must be a number from 0 to 65535"),
    ("http", "the port must be a number from 0 to 65535"),
    ("8000x", "the port must be a number from 0 to 65535"),
    ("", "the port must be a number from 0 to 65535"),
    ("-1", "the port must be a number from 0 to 65535"),
    ("::1:8000", "write an IPv6 address in brackets"),
    ("bad host:8000", "'bad host' is not a host name or address"),
    (":8000", "'' is not a host name or address"),
])
def test_a_bad_listen_address_is_one_sentence(capsys, tmp_path: Path, given: str, said: str) -> None:
    run, _ = fake_run(tmp_path, "run", [])
    code, out, err = cli(capsys, "watch", str(run), "--web", given)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and said in err, err


def test_a_port_in_use_or_an_address_not_of_this_machine_is_one_sentence(capsys, tmp_path: Path, monkeypatch) -> None:
    run, _ = fake_run(tmp_path, "run", [])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = cli(capsys, "watch", str(run), "--web", f"127.0.0.1:{port}")
    assert code == 1 and err == f"cbam-tui: error: --web 127.0.0.1:{port}: port {port} is in use there; choose another port\n"
    code, _, err = cli(capsys, "watch", str(run), "--web", "192.0.2.1:0")  # TEST-NET-1: no machine has it
    assert code == 1 and "192.0.2.1 is not an address of this machine" in err and err.count("\n") == 1

    def no_such_host(*_args, **_kw):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)  # no resolver is asked in a test
    code, _, err = cli(capsys, "watch", str(run), "--web", "nosuch.invalid:8000")
    assert code == 1 and "cannot listen on 'nosuch.invalid': no such host" in err and err.count("\n") == 1


def test_without_textual_serve_it_says_how_to_install_it(capsys, tmp_path: Path, monkeypatch) -> None:
    run, _ = fake_run(tmp_path, "run", [])
    monkeypatch.setitem(sys.modules, "textual_serve.server", None)  # import fails as when it is absent
    code, _, err = cli(capsys, "watch", str(run), "--web", "0")
    assert code == 1
    assert err == ("cbam-tui: error: --web needs textual-serve: pip install textual-serve "
                   "(in a clone of cbam-tui: pip install -e '.[web]')\n")


def test_the_command_per_connection_names_the_absolute_run_path_and_the_shell_runs_no_part_of_it(
    tmp_path: Path, monkeypatch
) -> None:
    name = "it's a $(touch pwned) `touch pwned2`; touch pwned3 & run\n\"x\""
    fake_run(tmp_path, name, [])
    monkeypatch.chdir(tmp_path)
    command = watch_command(Path(name))  # relative, as a user may type it
    assert shlex.split(command)[-2:] == ["--", str(tmp_path / name)] and command.startswith("exec ")
    env = {k: v for k, v in os.environ.items() if k != "TEXTUAL_DRIVER"}
    # As textual-serve runs it: through /bin/sh. Without a terminal, watch answers with one
    # line once it has found the run, so the path arrived whole.
    done = subprocess.run(["/bin/sh", "-c", command], cwd="/", env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "watch needs a terminal" in done.stderr, done.stderr
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("pwned")]


def test_the_gate_compares_the_token_and_names_why() -> None:
    gate = Gate("s3cret-token", "c")
    assert gate.refusal("box:8000", None, False, ["s3cret-token"]) is None
    assert gate.refusal("box:8000", None, False, ["wrong", "s3cret-token"]) is None  # a stale cookie beside the query
    for given in ([], ["s3cret-toke"], ["s3cret-token "], ["S3CRET-TOKEN"]):
        assert gate.refusal("box:8000", None, False, given) == (
            "a token is needed: open the address printed when the server started")
    assert gate.refusal("box:8000", "http://box:8000", True, ["s3cret-token"]) is None
    assert "another site" in (gate.refusal("box:8000", "http://evil.example", True, ["s3cret-token"]) or "")
    loopback = Gate(None, "c")
    for host in ("127.0.0.1:8000", "localhost:9000", "[::1]:8000", "127.0.0.2", "app.localhost:80"):
        assert loopback.refusal(host, None, False, []) is None, host
    for host in ("evil.example:8000", "10.0.0.1:8000", "[fe80::1]:8000", "localhost.evil.example"):
        assert "answers only to localhost" in (loopback.refusal(host, None, False, []) or ""), host
    assert loopback.refusal("a b", None, False, []) == "bad Host header"


ROUTES = ["/", "/ws", "/static/js/textual.js", "/static/css/xterm.css", "/static/", "/download/k", "/nosuch"]


@pytest.fixture
async def serve_app(tmp_path: Path):
    """The real server's aiohttp application in this process, for a gate."""
    pytest.importorskip("textual_serve", reason="textual-serve is absent (pip install -e '.[web]')")
    from aiohttp.test_utils import TestClient, TestServer

    from tui.web import make_server

    run, _ = fake_run(tmp_path, "run", [])
    clients: list[TestClient] = []

    async def start(gate: Gate) -> TestClient:
        client = TestClient(TestServer(await make_server(run, gate)._make_app(), host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


async def test_off_loopback_every_route_needs_the_token(serve_app) -> None:
    token = "tok-" + "x" * 28
    client = await serve_app(Gate(token, "cbam_tui_token_1"))
    for path in ROUTES:
        for params, cookies in (({}, {}), ({"token": token[:-1]}, {}), ({}, {"cbam_tui_token_1": "nope"}),
                                ({}, {"cbam_tui_token_2": token})):  # another server's cookie
            client.session.cookie_jar.clear()
            client.session.cookie_jar.update_cookies(cookies)
            got = await client.get(path, params=params)
            assert got.status == 403, (path, params, cookies)
            assert "a token is needed" in await got.text()
    client.session.cookie_jar.clear()
    page = await client.get("/", params={"token": token})
    assert page.status == 200 and 'data-session-websocket-url="ws://127.0.0.1:' in await page.text()
    cookie = page.cookies["cbam_tui_token_1"]
    assert cookie.value == token and cookie["httponly"] and cookie["samesite"] == "Strict"
    # The page's files come with the cookie alone, as a browser fetches them.
    client.session.cookie_jar.update_cookies({"cbam_tui_token_1": token})
    assert (await client.get("/static/js/textual.js")).status == 200
    assert (await client.get("/static/")).status != 200  # no directory listings


async def test_on_loopback_it_answers_only_to_a_loopback_name_and_its_own_pages(serve_app) -> None:
    client = await serve_app(Gate(None, "cbam_tui_token_1"))
    page = await client.get("/")
    assert page.status == 200
    body = await page.text()
    assert "/static/js/textual.js" in body and "ws://127.0.0.1:" in body
    # Through an SSH tunnel on another local port, the page points at the tunnel.
    tunnel = await client.get("/", headers={"Host": "localhost:9000"})
    assert 'data-session-websocket-url="ws://localhost:9000/ws"' in await tunnel.text()
    assert (await client.get("/static/css/xterm.css")).status == 200
    assert (await client.get("/static/")).status != 200
    # A page on another site, reaching 127.0.0.1 through a name of its own (DNS rebinding).
    rebound = await client.get("/", headers={"Host": "evil.example"})
    assert rebound.status == 403 and "answers only to localhost" in await rebound.text()
    # A page on another site opening the websocket (browsers apply no CORS to websockets).
    hijack = await client.get("/ws", headers={"Origin": "http://evil.example", "Upgrade": "websocket",
                                              "Connection": "Upgrade"})
    assert hijack.status == 403 and "another site" in await hijack.text()


def test_stopping_the_server_ends_every_pages_watch_even_one_that_does_not_answer(tmp_path: Path) -> None:
    pytest.importorskip("textual_serve")
    import asyncio
    import re
    import signal

    import aiohttp

    from tests.e2e.terminal import CBAM_TUI, gone
    from tests.helpers import wait_for

    run, _ = fake_run(tmp_path, "r", [])
    server = subprocess.Popen([CBAM_TUI, "watch", str(run), "--web", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert server.stdout is not None
    port = re.search(r"127\.0\.0\.1:(\d+)/", server.stdout.readline())
    assert port, "no address printed"
    pages: list[int] = []

    async def open_page_then_stop_the_server() -> None:
        async with aiohttp.ClientSession() as session, \
                session.ws_connect(f"http://127.0.0.1:{port[1]}/ws?width=80&height=24") as ws:
            await ws.receive(timeout=60)  # the page's dashboard is drawing
            pages.extend(int(p) for p in subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True,
                                                        text=True).stdout.split())
            for page in pages:
                os.kill(page, signal.SIGSTOP)  # a dashboard that cannot answer the quit
            server.send_signal(signal.SIGINT)
            await asyncio.get_running_loop().run_in_executor(None, server.wait, 60)

    try:
        asyncio.run(open_page_then_stop_the_server())
        out = server.stdout.read()
        assert pages, "the page started no watch process"
        assert server.returncode == 0 and "Traceback" not in out, out
        wait_for("the page's watch to be gone", lambda: all(gone(p) for p in pages), timeout=10)
    finally:
        server.kill()
        for page in pages:
            with contextlib.suppress(ProcessLookupError):
                os.kill(page, signal.SIGKILL)
