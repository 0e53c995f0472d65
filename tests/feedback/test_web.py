"""The web labelling page: answered in a real browser, its API's security and bad-request handling,
leases between labellers, a server killed mid-answer, `WebOracle` inside a training loop, the CLI."""

from __future__ import annotations

import http.client
import importlib.util
import json
import logging
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from llm_gym import GoldScorer, Query, collect
from llm_gym.core.preferences import Answer
from llm_gym.feedback.store import PreferenceStore
from llm_gym.feedback.web import TOKEN_HEADER, LabelServer, WebOracle

from browser import start_chromium
from doubles import run_in_threads

PAGE_TITLE = "llm_gym · preference labelling"
KEY_GUARD = 0.2  # seconds: the page ignores keys for 150 ms after it shows a new query


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def call(server: LabelServer, method: str, path: str, body: object = None, *, token: str | None = "",
         headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, dict]:
    """One HTTP request to `server`; the token header is the server's unless `token` is given (None: no header)."""
    h = dict(headers or {})
    token = server.token if token == "" else token
    if token is not None:
        h[TOKEN_HEADER] = token
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        h.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(server.origin + path, data=data, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return r.status, json.loads(text) if r.headers.get_content_type() == "application/json" else {"text": text}
    except urllib.error.HTTPError as err:
        text = err.read()
        return err.code, json.loads(text) if err.headers.get_content_type() == "application/json" else {"text": text}


def take(server: LabelServer, session: str = "session-a") -> dict:
    status, body = call(server, "POST", "/api/next", {"session": session})
    assert status == 200, body
    return body


def snapshot(path: Path) -> tuple[list, list]:
    """Every answer and lease row, read through a separate connection."""
    conn = sqlite3.connect(path)
    try:
        return (conn.execute("SELECT * FROM answers ORDER BY rowid").fetchall(),
                conn.execute("SELECT * FROM leases ORDER BY rowid").fetchall())
    finally:
        conn.close()


def pairs(n: int, prefix: str = "the film was") -> list[Query]:
    return [Query(f"{prefix} #{i}", (f" great {i} .", f" dull {i} .")) for i in range(n)]


@pytest.fixture()
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "labels.sqlite"


@pytest.fixture()
def serve_store(store_path: Path):
    """Start a server on a store holding the given queries: `serve_store(queries, **LabelServer kwargs)`."""
    servers: list[LabelServer] = []

    def start(queries: list[Query], **kwargs) -> LabelServer:
        store = kwargs.pop("store", None) or PreferenceStore(store_path)
        store.add_queries(queries)
        server = LabelServer(store, **kwargs).start()
        server._test_store = store  # closed below
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
        server._test_store.close()


# --------------------------------------------------------------------------------------
# In the browser
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def open_page(browser, server: LabelServer) -> None:
    browser.delete_all_cookies()
    browser.get(server.url)
    wait_for(browser, lambda: state(browser) in ("query", "done"))
    time.sleep(KEY_GUARD)


def state(browser) -> str | None:
    return browser.find_element("tag name", "body").get_attribute("data-state")


def shown_query(browser) -> str | None:
    return browser.execute_script("return document.getElementById('query').dataset.queryId || null")


def wait_for(browser, condition, timeout: float = 10.0) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, timeout, poll_frequency=0.05).until(lambda _: condition())


def press(browser, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).send_keys(keys).perform()


def answer_and_wait(browser, do) -> None:
    """Do something that answers the shown query, then wait until the page has moved on."""
    before = shown_query(browser)
    do()
    wait_for(browser, lambda: state(browser) in ("query", "done") and shown_query(browser) != before)
    time.sleep(KEY_GUARD)


def test_pairwise_queries_answered_by_click_and_keyboard(browser, serve_store, store_path) -> None:
    qs = pairs(5)
    server = serve_store(qs, labeller="alice")
    open_page(browser, server)
    assert browser.title == PAGE_TITLE
    assert "token" not in browser.current_url, "the token leaves the address bar"
    assert browser.find_element("id", "progress").text == "answered 0 · pending 5"
    cards = browser.find_elements("css selector", "#completions .completion")
    assert [c.text for c in cards] == list(qs[0].completions) and shown_query(browser) == qs[0].query_id

    click = lambda element_id: lambda: browser.find_element("id", element_id).click()  # noqa: E731
    answer_and_wait(browser, click("choose-second"))  # q0: the button
    answer_and_wait(browser, lambda: press(browser, "1"))  # q1: keyboard
    answer_and_wait(browser, lambda: press(browser, "t"))  # q2: tie
    answer_and_wait(browser, lambda: press(browser, "s"))  # q3: skipped, so q4 comes next
    assert shown_query(browser) == qs[4].query_id
    answer_and_wait(browser, lambda: press(browser, "2"))
    assert shown_query(browser) == qs[3].query_id, "the skipped query comes back once nothing else is left"
    answer_and_wait(browser, lambda: browser.find_elements("css selector", "#completions .card")[0].click())
    assert state(browser) == "done"
    wait_for(browser, lambda: browser.find_element("id", "progress").text == "answered 5 · pending 0")

    with PreferenceStore(store_path) as store:
        got = {a.query_id: a for a in store.answers()}
    assert {q.query_id: got[q.query_id].ranks for q in qs} == {
        qs[0].query_id: (1, 0), qs[1].query_id: (0, 1), qs[2].query_id: (0, 0), qs[3].query_id: (0, 1),
        qs[4].query_id: (1, 0),
    }
    assert {a.labeller for a in got.values()} == {"alice"}


def test_k_completions_ranked_in_the_page(browser, serve_store, store_path) -> None:
    four = Query("rank these reviews", (" a fine film .", " a dull film .", " the best film .", " an ok film ."))
    three = Query("and these", (" one", " two", " three"))
    server = serve_store([four, three])
    open_page(browser, server)
    assert len(browser.find_elements("css selector", "#completions .card")) == 4
    submit = browser.find_element("id", "submit-ranking")
    press(browser, "31")
    press(browser, "\ue003")  # Backspace: undo the 1
    press(browser, "4")
    assert not submit.is_enabled(), "two of four ranked"
    press(browser, "1")  # the last one (2) is implied
    ranks_shown = [e.text for e in browser.find_elements("css selector", "#completions .card-rank")]
    assert ranks_shown == ["#3", "#4", "#1", "#2"] and submit.is_enabled()
    answer_and_wait(browser, lambda: press(browser, "\ue007"))  # Enter

    assert shown_query(browser) == three.query_id
    cards = browser.find_elements("css selector", "#completions .card")
    cards[1].click()
    cards[2].click()
    answer_and_wait(browser, lambda: browser.find_element("id", "submit-ranking").click())
    assert state(browser) == "done"
    with PreferenceStore(store_path) as store:
        assert {a.query_id: a.ranks for a in store.answers()} == {four.query_id: (2, 3, 0, 1), three.query_id: (2, 0, 1)}


def test_a_held_key_answers_one_query(browser, serve_store, store_path) -> None:
    qs = pairs(3)
    server = serve_store(qs)
    open_page(browser, server)
    # The first press answers q0; the same key auto-repeating (repeat: true) while q1 shows answers nothing.
    browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const key = (repeat) => document.dispatchEvent(new KeyboardEvent("keydown", {key: "1", repeat, bubbles: true}));
        key(false);
        let n = 0;
        const held = setInterval(() => { key(true); if (++n === 30) { clearInterval(held); done(); } }, 30);
    """)
    assert shown_query(browser) == qs[1].query_id
    # A second press the moment q1 shows was meant for q0: it is ignored too.
    browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const key = () => document.dispatchEvent(new KeyboardEvent("keydown", {key: "2", bubbles: true}));
        const shown = () => document.getElementById("query").dataset.queryId;
        const before = shown();
        key();
        const wait = setInterval(() => {
          if (shown() !== before && document.body.dataset.state === "query") { clearInterval(wait); key(); done(); }
        }, 5);
    """)
    time.sleep(0.5)
    assert shown_query(browser) == qs[2].query_id
    with PreferenceStore(store_path) as store:
        assert {a.query_id: a.ranks for a in store.answers()} == {qs[0].query_id: (0, 1), qs[1].query_id: (1, 0)}


def test_markup_in_a_completion_is_shown_as_text_and_runs_nothing(browser, serve_store) -> None:
    script = "<script>document.title='pwned'; window.pwned = 1;</script>"
    image = "<img src=x onerror=\"document.title='pwned'; window.pwned = 2;\">"
    prompt = "<b>bold?</b> & <i>\n  two lines</i>"
    server = serve_store([Query(prompt, (script, image))])
    open_page(browser, server)
    time.sleep(0.3)  # an image error handler would have fired by now
    assert browser.title == PAGE_TITLE
    assert browser.execute_script("return typeof window.pwned") == "undefined"
    texts = browser.execute_script(
        "return Array.from(document.querySelectorAll('#completions .completion'), e => [e.textContent, e.children.length])"
    )
    assert texts == [[script, 0], [image, 0]], "the exact text, no element parsed out of it"
    assert browser.execute_script("return [document.getElementById('prompt').textContent, document.images.length, "
                                  "document.scripts.length]") == [prompt, 0, 1]


def test_the_browser_without_the_token_is_refused(browser, serve_store) -> None:
    server = serve_store(pairs(1))
    browser.delete_all_cookies()
    for path in ("/", "/?token=wrong-token-of-some-length", "/static/app.js"):
        browser.get(server.origin + path)
        assert "needs its access token" in browser.page_source or "missing or wrong access token" in browser.page_source
    assert browser.title != PAGE_TITLE


class _Attacker(BaseHTTPRequestHandler):
    """Serves a page on another origin that tries to answer a query on the labelling server."""

    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, *args) -> None:
        pass


def test_a_cross_site_page_cannot_answer(browser, serve_store, store_path) -> None:
    server = serve_store(pairs(2))
    open_page(browser, server)  # the victim has the page open: the token cookie is in the browser
    lease = take(server, "victim-session")
    payload = json.dumps({"lease_id": lease["lease_id"], "query_id": lease["query_id"], "choice": "first"})
    before = snapshot(store_path)
    target = server.origin + "/api/answer"
    _Attacker.page = textwrap.dedent(f"""
        <!doctype html><title>attack</title><script>
        const body = {json.dumps(payload)};
        Promise.allSettled([
          fetch("{target}", {{method: "POST", mode: "no-cors", credentials: "include", body,
                              headers: {{"Content-Type": "text/plain"}}}}),
          fetch("{target}", {{method: "POST", credentials: "include", body,
                              headers: {{"Content-Type": "application/json", "{TOKEN_HEADER}": "guess-guess-guess-guess"}}}}),
        ]).then(r => {{ document.title = "sent:" + r.map(x => x.status).join(","); }});
        </script>""").encode()
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://localhost:{attacker.server_address[1]}/")  # another site than 127.0.0.1
        wait_for(browser, lambda: browser.title.startswith("sent:"))
    finally:
        attacker.shutdown()
        attacker.server_close()
    assert browser.title == "sent:fulfilled,rejected", "the simple request went out (and was refused); the preflight failed"
    assert snapshot(store_path) == before, "nothing was answered"


# --------------------------------------------------------------------------------------
# The API: access, bad requests, replays, leases
# --------------------------------------------------------------------------------------


def test_requests_without_the_token_are_refused(serve_store, store_path) -> None:
    server = serve_store(pairs(1))
    before = snapshot(store_path)
    for path in ("/", "/?token=wrong-token-of-some-length", "/static/app.js", "/api/progress"):
        status, _ = call(server, "GET", path, token=None)
        assert status == 401, path
    assert call(server, "GET", "/api/progress", token="wrong-token-of-some-length")[0] == 401
    status, body = call(server, "POST", "/api/next", {"session": "session-a"}, token=None)
    assert status == 403 and TOKEN_HEADER in body["error"]
    status, body = call(server, "POST", "/api/next", {"session": "session-a"}, token="wrong-token-of-some-length")
    assert status == 401
    cookie = {"Cookie": f"{server.cookie_name}={server.token}"}
    assert call(server, "GET", "/api/progress", token=None, headers=cookie)[0] == 200, "the page's cookie reads"
    status, _ = call(server, "POST", "/api/next", {"session": "session-a"}, token=None, headers=cookie)
    assert status == 403, "but a cookie alone never changes anything"
    assert snapshot(store_path) == before
    status, _ = call(server, "GET", server.url[len(server.origin):], token=None)
    assert status == 200


def test_security_headers_and_local_assets(serve_store) -> None:
    server = serve_store(pairs(1))
    with urllib.request.urlopen(server.url, timeout=10) as r:
        page, headers = r.read().decode(), r.headers
    assert headers["Content-Security-Policy"].startswith("default-src 'none'; script-src 'self'")
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "no-referrer"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "http" not in page.replace(server.origin, ""), "no asset from elsewhere"
    assert "<script>" not in page and "style=" not in page, "no inline script or style"
    for asset in ("/static/app.js", "/static/app.css"):
        status, body = call(server, "GET", asset)
        assert status == 200 and b"http" not in body["text"]
    assert b"innerHTML" not in call(server, "GET", "/static/app.js")[1]["text"]


def test_cross_site_and_non_json_posts_are_refused(serve_store, store_path) -> None:
    server = serve_store(pairs(1))
    lease = take(server)
    before = snapshot(store_path)
    answer = {"lease_id": lease["lease_id"], "query_id": lease["query_id"], "choice": "first"}
    for headers, status in [({"Origin": "http://evil.example"}, 403), ({"Origin": "null"}, 403),
                            ({"Referer": "http://evil.example/page"}, 403), ({"Content-Type": "text/plain"}, 415),
                            ({"Host": "evil.example"}, 403)]:
        got, body = call(server, "POST", "/api/answer", answer, headers=headers)
        assert got == status and body["error"], headers
    assert snapshot(store_path) == before
    assert call(server, "GET", "/api/progress", headers={"Host": f"rebound.example:{server.port}"})[0] == 403
    assert call(server, "POST", "/api/answer", answer, headers={"Origin": server.origin})[0] == 200


BAD_ANSWERS = [
    # (what the body is, status, a phrase of the message)
    ("not json", 400, "not valid UTF-8 JSON"),
    ([1, 2], 400, "must be a JSON object"),
    ({"lease_id": "L", "query_id": "Q", "choice": "first", "extra": 1}, 400, "unknown field(s) ['extra']"),
    ({"query_id": "Q", "choice": "first"}, 400, "missing 'lease_id'"),
    ({"lease_id": "L", "query_id": "no-such-query", "choice": "first"}, 404, "unknown query_id"),
    ({"lease_id": "no-such-lease", "query_id": "Q", "choice": "first"}, 404, "unknown lease_id"),
    ({"lease_id": "L", "query_id": "Q2", "choice": "first"}, 400, "was handed out for query"),
    ({"lease_id": "L", "query_id": "Q", "choice": "better"}, 400, "unknown choice 'better'"),
    ({"lease_id": "L", "query_id": "Q", "choice": 1}, 400, "unknown choice 1"),
    ({"lease_id": "L", "query_id": "Q", "choice": []}, 400, "unknown choice []"),  # unhashable: not a TypeError
    ({"lease_id": "L", "query_id": "Q", "choice": {}}, 400, "unknown choice {}"),
    ({"lease_id": "L4", "query_id": "Q4", "choice": ["first"]}, 400, "unknown choice ['first']"),
    ({"lease_id": "L", "query_id": "Q", "ranking": [0, 0]}, 400, "each completion index 0 to 1 once"),
    ({"lease_id": "L", "query_id": "Q", "ranking": [True, 0]}, 400, "each completion index"),
    ({"lease_id": "L", "query_id": "Q", "ranking": [{}, []]}, 400, "each completion index"),
    ("[" * 60_000, 400, "nested too deeply"),  # a RecursionError in json.loads
    ("9" * 5_000, 400, "not valid UTF-8 JSON"),  # a ValueError (int digits limit), not a JSONDecodeError
    ({"lease_id": "\ud800", "query_id": "Q", "choice": "first"}, 400, "lone surrogate"),  # SQLite cannot encode it
    ({"lease_id": "L", "query_id": "\ud800", "choice": "first"}, 400, "lone surrogate"),
    ({"lease_id": "L", "query_id": "Q", "choice": "first", "\udfff": 1}, 400, "lone surrogate"),
    ({"lease_id": "L", "query_id": "Q", "choice": "first", "ranking": [0, 1]}, 400, "exactly one of 'choice'"),
    ({"lease_id": "L", "query_id": "Q"}, 400, "exactly one of 'choice'"),
    ({"lease_id": "L4", "query_id": "Q4", "choice": "first"}, 400, "ranks 4 completions: send 'ranking'"),
]


def test_bad_requests_get_a_4xx_and_change_nothing(serve_store, store_path) -> None:
    four = Query("four", ("a", "b", "c", "d"))
    server = serve_store([*pairs(2), four])
    q, q2 = take(server, "session-a"), take(server, "session-b")
    q4 = take(server, "session-c")
    ids = {"L": q["lease_id"], "Q": q["query_id"], "Q2": q2["query_id"], "L4": q4["lease_id"], "Q4": q4["query_id"]}
    before = snapshot(store_path)
    for body, status, phrase in BAD_ANSWERS:
        if isinstance(body, dict):
            body = {k: ids.get(v, v) if isinstance(v, str) else v for k, v in body.items()}
        raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        got, reply = call(server, "POST", "/api/answer", raw=raw)
        assert (got, phrase in reply["error"]) == (status, True), (body, reply)
    for body, phrase in [({"session": "short"}, "'session' must be"), ({"session": "session-x", "labeller": ""}, "'labeller'"),
                         ({"session": "session-x", "labeller": "x" * 101}, "'labeller'"),
                         ({"session": "session-x", "labeller": "\ud800"}, "lone surrogate"),
                         ({"session": "session-x", "who": 1}, "unknown field")]:
        got, reply = call(server, "POST", "/api/next", body)
        assert got == 400 and phrase in reply["error"]
    assert call(server, "POST", "/api/answer", raw=b"x" * 70_000)[0] == 413
    for length in ("²", "-1", "1e3", "", "9" * 10):  # '²'.isdigit() is True but int('²') raises
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            conn.putrequest("POST", "/api/answer")
            conn.putheader(TOKEN_HEADER, server.token)
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", length)
            conn.endheaders(b"{}")
            reply = conn.getresponse()
            assert (reply.status, "Content-Length" in json.loads(reply.read())["error"]) == (411, True), length
        finally:
            conn.close()
    assert call(server, "GET", "/api/answer")[0] == 405
    assert call(server, "PUT", "/api/answer", {"a": 1})[0] == 405
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):  # who has no token, or a foreign Host, learns nothing more
        assert call(server, method, "/api/answer", token=None)[0] == 401, method
        assert call(server, method, "/api/answer", token="wrong-token-of-some-length")[0] == 401, method
        assert call(server, method, "/api/answer", headers={"Host": "evil.example"})[0] == 403, method
        assert call(server, method, "/api/answer", token=None,
                    headers={"Cookie": f"{server.cookie_name}={server.token}"})[0] == 405, method
    assert call(server, "GET", "/nowhere")[0] == 404
    assert call(server, "POST", "/nowhere", {})[0] == 404
    assert snapshot(store_path) == before, "no answer and no lease changed"


def test_an_unexpected_failure_is_a_logged_json_500(serve_store, store_path, monkeypatch, caplog) -> None:
    server = serve_store(pairs(1))

    def broken(*args, **kwargs):
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(server, "progress", broken)
    with caplog.at_level(logging.ERROR, logger="llm_gym.feedback.web"):
        for method, path, body in [("GET", "/api/progress", None), ("POST", "/api/next", {"session": "session-a"})]:
            status, reply = call(server, method, path, body)
            assert status == 500 and "its log has the details" in reply["error"], (path, reply)
    assert "the disk is on fire" in caplog.text and "GET /api/progress failed" in caplog.text
    monkeypatch.undo()
    assert call(server, "GET", "/api/progress")[0] == 200, "the server still serves"


def _progress_request(server: LabelServer) -> bytes:
    return (f"GET /api/progress HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{TOKEN_HEADER}: {server.token}\r\n"
            "Connection: close\r\n\r\n").encode()


def test_a_burst_of_clients_is_queued_not_reset(store_path) -> None:
    """Issue 15 item 13: the listen backlog was the standard library's 5, so of 40 clients arriving while the
    server was busy, 34 could not connect. They wait in the queue now and are all served."""
    with LabelServer(store_path) as server:  # listening, not yet accepting: as busy as a server gets
        clients = []
        for _ in range(40):
            client = socket.create_connection(("127.0.0.1", server.port), timeout=1.0)
            clients.append(client)
        server.start()
        for client in clients:
            with client:
                client.settimeout(10)
                client.sendall(_progress_request(server))
                assert client.recv(64).startswith(b"HTTP/1.1 200 OK")


def test_a_client_hanging_up_mid_request_is_one_debug_line(serve_store, caplog, capfd) -> None:
    """Issue 15 item 13: each client that hung up mid-request printed a BrokenPipe/ConnectionReset traceback."""
    server = serve_store(pairs(1))
    with caplog.at_level(logging.DEBUG, logger="llm_gym.feedback.web"):
        for _ in range(10):
            client = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            client.sendall(_progress_request(server).replace(server.token.encode(), b"wrong-token-0123456789"))
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # hang up with a reset
            client.close()
        try:  # the same, reported by socketserver the way it reports a reply that found the client gone
            raise BrokenPipeError(32, "Broken pipe")
        except BrokenPipeError:
            server._httpd.handle_error(None, ("127.0.0.1", 4242))
        assert call(server, "GET", "/api/progress")[0] == 200, "the server still serves"
    hung_up = [r for r in caplog.records if "hung up mid-request" in r.getMessage()]
    assert hung_up and all(r.levelno == logging.DEBUG for r in hung_up)
    assert "client 127.0.0.1 hung up mid-request (BrokenPipeError)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("foreign", ["ui=dark mode", 'x={"a":1}', 'x="unterminated'])
def test_a_foreign_cookie_on_the_host_does_not_hide_the_token(serve_store, foreign) -> None:
    server = serve_store(pairs(1))
    cookie = {"Cookie": f"{foreign}; {server.cookie_name}={server.token}; after=1"}
    for path in ("/", "/static/app.js", "/static/app.css", "/api/progress"):
        assert call(server, "GET", path, token=None, headers=cookie)[0] == 200, path
    wrong_name = {"Cookie": f"{foreign}; {server.cookie_name}0={server.token}; x{server.cookie_name}={server.token}"}
    assert call(server, "GET", "/static/app.js", token=None, headers=wrong_name)[0] == 401, "the name must match exactly"


def test_host_headers_are_parsed_like_urls(serve_store) -> None:
    server = serve_store(pairs(1))
    port = server.port
    for host, status in [(f"[::1]:{port}", 200), ("[::1]", 200), (f"LOCALHOST:{port}", 200), (f"127.0.0.2:{port}", 200),
                         (f"[::1:{port}", 403), (f"[::2]:{port}", 403), (f"127.0.0.1.evil.example:{port}", 403),
                         (f"evil.example:{port}:1", 403), ("", 403)]:
        assert call(server, "GET", "/api/progress", headers={"Host": host})[0] == status, host


def test_an_ipv6_loopback_server_accepts_its_own_url(store_path) -> None:
    PreferenceStore(store_path).close()
    ipv6 = socket.has_ipv6
    if ipv6:
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
        except OSError:
            ipv6 = False
    if not ipv6:  # no IPv6 loopback on this machine: the error says what could not be done
        with pytest.raises(OSError, match=r"cannot listen on ::1 port 0"):
            LabelServer(store_path, host="::1")
        return
    for host in ("::1", "[::1]"):
        with LabelServer(store_path, host=host).start() as server:
            assert server.origin == f"http://[::1]:{server.port}" and server.url.startswith(server.origin + "/?token=")
            with urllib.request.urlopen(server.url, timeout=10) as r:  # Host: [::1]:PORT
                assert r.status == 200
            status, body = call(server, "POST", "/api/next", {"session": "session-a"}, headers={"Origin": server.origin})
            assert (status, body["done"]) == (200, True)
            assert call(server, "GET", "/api/progress", headers={"Host": f"evil.example:{server.port}"})[0] == 403


def test_a_public_origin_behind_a_proxy_may_post(serve_store, store_path) -> None:
    server = serve_store(pairs(2), public_origin="https://Labels.Example.org/")
    assert server.public_origin == "https://labels.example.org"
    lease = take(server)
    answer = {"lease_id": lease["lease_id"], "query_id": lease["query_id"], "choice": "first"}
    proxied = {"Origin": "https://labels.example.org", "Host": "labels.example.org"}  # as the proxy forwards it
    for headers in [{"Origin": "https://evil.example"}, {"Origin": "http://labels.example.org"},
                    {"Origin": "https://labels.example.org:8443"}, {**proxied, "Origin": "https://evil.example"},
                    {"Referer": "https://evil.example/"}, {"Host": "evil.example", "Origin": "https://labels.example.org"}]:
        status, body = call(server, "POST", "/api/answer", answer, headers=headers)
        assert status == 403 and body["error"], headers
    assert snapshot(store_path)[0] == []
    assert call(server, "POST", "/api/answer", answer, headers=proxied)[0] == 200
    status, body = call(server, "POST", "/api/next", {"session": "session-b"},
                        headers={"Referer": "https://labels.example.org/", "Host": "127.0.0.1"})
    assert status == 200 and not body["done"]
    for bad in ["labels.example.org", "https://labels.example.org/labels", "ftp://labels.example.org",
                "https://labels.example.org:99999", "https://user@labels.example.org", "https://", "https://a b"]:
        with pytest.raises(ValueError, match="scheme://host"):
            LabelServer(store_path, public_origin=bad)


def test_bad_default_labeller_names_are_refused(store_path) -> None:
    PreferenceStore(store_path).close()
    for bad in ["x" * 101, "tab\there", "line\nbreak", "   ", "", "\ud800", None]:
        with pytest.raises(ValueError, match="labeller must be a name of 1 to 100 printable characters"):
            LabelServer(store_path, labeller=bad)
    LabelServer(store_path, labeller="x" * 100).close()


def test_a_held_lease_takes_the_latest_labeller_name(serve_store, store_path) -> None:
    server = serve_store(pairs(1), labeller="default")
    first = take(server, "session-a")
    assert first["labeller"] == "default"
    status, again = call(server, "POST", "/api/next", {"session": "session-a", "labeller": "alice"})
    assert status == 200 and (again["lease_id"], again["labeller"]) == (first["lease_id"], "alice")
    assert call(server, "POST", "/api/answer", {"lease_id": first["lease_id"], "query_id": first["query_id"],
                                                "choice": "second"})[0] == 200
    with PreferenceStore(store_path) as store:
        assert [(a.labeller, a.ranks) for a in store.answers()] == [("alice", (1, 0))]


def test_close_stops_serve_forever_in_the_callers_thread(store_path) -> None:
    PreferenceStore(store_path).close()
    server = LabelServer(store_path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    assert call(server, "GET", "/api/progress")[0] == 200
    server.close()
    thread.join(timeout=5)
    assert not thread.is_alive(), "close() stopped the loop"
    server.close()  # idempotent
    server.serve_forever()  # returns at once once closed

    early = LabelServer(store_path)  # closed before its thread got to serve
    early.close()
    thread = threading.Thread(target=early.serve_forever, daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_a_replayed_submission_stores_one_answer(serve_store, store_path) -> None:
    server = serve_store(pairs(2))
    lease = take(server)
    answer = {"lease_id": lease["lease_id"], "query_id": lease["query_id"], "choice": "tie"}
    first = call(server, "POST", "/api/answer", answer)
    assert first == (200, {"ok": True, "outcome": "answered", "query_id": lease["query_id"],
                           "lease_id": lease["lease_id"], "ranks": [0, 0]})
    for _ in range(3):
        assert call(server, "POST", "/api/answer", answer) == first, "the same confirmation"
    status, body = call(server, "POST", "/api/answer", {**answer, "choice": "first"})
    assert status == 409 and "already closed" in body["error"]
    answers, _ = snapshot(store_path)
    assert len(answers) == 1
    skip = take(server)
    reply = call(server, "POST", "/api/answer", {"lease_id": skip["lease_id"], "query_id": skip["query_id"], "choice": "skip"})
    assert reply[1]["outcome"] == "skipped" and call(server, "POST", "/api/answer", {
        "lease_id": skip["lease_id"], "query_id": skip["query_id"], "choice": "skip"}) == reply
    assert len(snapshot(store_path)[0]) == 1 and call(server, "GET", "/api/progress")[1]["pending"] == 1


def test_an_unanswered_query_goes_back_to_the_queue(serve_store, store_path) -> None:
    now = [1000.0]
    store = PreferenceStore(store_path, clock=lambda: now[0])
    server = serve_store(pairs(1), store=store, lease_seconds=30)
    a = take(server, "session-a")
    assert take(server, "session-b")["done"] is True, "the only query is held"
    assert call(server, "GET", "/api/progress")[1] == {"answered": 0, "pending": 1, "labelling": 1, "answers": 0,
                                                       "queries": 1}
    now[0] += 31
    b = take(server, "session-b")
    assert b["query_id"] == a["query_id"] and b["lease_id"] != a["lease_id"]
    status, body = call(server, "POST", "/api/answer", {"lease_id": a["lease_id"], "query_id": a["query_id"], "choice": "first"})
    assert status == 409 and "handed to another labeller" in body["error"]
    assert call(server, "POST", "/api/answer", {"lease_id": b["lease_id"], "query_id": b["query_id"], "choice": "second"})[0] == 200
    assert [r[2] for r in snapshot(store_path)[0]] == ["[1, 0]"]


def test_concurrent_labellers_never_get_the_same_query(serve_store) -> None:
    server = serve_store(pairs(40))
    handed: list[tuple[str, str]] = []

    def label(session: str) -> None:
        while not (lease := take(server, session))["done"]:
            handed.append((session, lease["query_id"]))
            status, _ = call(server, "POST", "/api/answer",
                             {"lease_id": lease["lease_id"], "query_id": lease["query_id"], "choice": "first"})
            assert status == 200

    run_in_threads(label, [f"labeller-{i}" for i in range(6)])
    ids = [qid for _, qid in handed]
    assert len(ids) == len(set(ids)) == 40 and len({s for s, _ in handed}) > 1


def test_a_network_address_needs_a_token_and_warns(store_path, caplog) -> None:
    PreferenceStore(store_path).close()
    with pytest.raises(ValueError, match="reachable from the network, so an access token is required"):
        LabelServer(store_path, host="0.0.0.0")
    with pytest.raises(ValueError, match="16 to 256 URL-safe"):
        LabelServer(store_path, token="short")
    with caplog.at_level("WARNING", logger="llm_gym.feedback.web"):
        with LabelServer(store_path, host="0.0.0.0", token="a-long-enough-token-1234") as server:
            assert server.url == f"http://127.0.0.1:{server.port}/?token=a-long-enough-token-1234"
    assert "reachable from the network" in caplog.text


# --------------------------------------------------------------------------------------
# A server killed mid-answer
# --------------------------------------------------------------------------------------

# The server process imports only the web module (not the whole llm_gym package, which loads
# torch and takes seconds): a stub package object points `llm_gym.*` imports at the source folder.
_SERVER = textwrap.dedent(
    """
    import sys, types
    pkg = types.ModuleType("llm_gym"); pkg.__path__ = [sys.argv[2]]; sys.modules["llm_gym"] = pkg
    from llm_gym.feedback.web import serve
    serve(sys.argv[1], token=sys.argv[3], on_start=lambda server: print(server.origin, flush=True))
    """
)


def test_a_killed_server_leaves_each_answer_whole_or_absent(store_path) -> None:
    queries = pairs(300) + [Query(f"rank #{i}", (" a", " b", " c")) for i in range(100)]
    with PreferenceStore(store_path) as store:
        store.add_queries(queries)
    token = "kill-test-token-0123456789"
    package_dir = str(Path(__import__("llm_gym").__file__).parent)
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(store_path), package_dir, token],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    confirmed: dict[str, list[int]] = {}
    lock = threading.Lock()
    try:
        origin = proc.stdout.readline().strip()
        assert origin.startswith("http://127.0.0.1:"), proc.stderr.read()
        server = type("Remote", (), {"origin": origin, "token": token})()
        stop = threading.Event()

        def label(session: str, rng: np.random.Generator) -> None:
            while not stop.is_set():
                try:
                    lease = take(server, session)
                    if lease["done"]:
                        return
                    answer = {"lease_id": lease["lease_id"], "query_id": lease["query_id"]}
                    if lease["k"] == 2:
                        answer["choice"] = str(rng.choice(["first", "second", "tie"]))
                    else:
                        answer["ranking"] = rng.permutation(3).tolist()
                    status, reply = call(server, "POST", "/api/answer", answer)
                except (OSError, HTTPException, AssertionError, json.JSONDecodeError):
                    return  # the server is gone (a reply cut short is not a confirmation)
                if status == 200:
                    with lock:
                        confirmed[reply["query_id"]] = reply["ranks"]

        threads = [threading.Thread(target=label, args=(f"labeller-{i}", np.random.default_rng(i))) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(confirmed) < 60 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)  # mid-way: eight labellers are answering
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with lock:
        confirmed = dict(confirmed)
    assert len(confirmed) >= 60, proc.stderr.read()

    conn = sqlite3.connect(store_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT a.query_id, a.ranks, a.labeller, a.answered_at, q.completions "
                            "FROM answers a JOIN queries q ON q.query_id = a.query_id").fetchall()
        orphans = conn.execute("SELECT count(*) FROM leases l WHERE l.outcome = 'answered' AND NOT EXISTS "
                               "(SELECT 1 FROM answers a WHERE a.answer_id = l.answer_id)").fetchone()[0]
    finally:
        conn.close()
    assert orphans == 0, "a lease is closed in the same transaction as its answer"
    stored = {}
    for query_id, ranks, labeller, answered_at, completions in rows:
        answer = Answer(query_id, tuple(json.loads(ranks)), labeller, answered_at)  # a whole, valid row
        assert len(answer.ranks) == len(json.loads(completions)) and labeller == "human"
        stored[query_id] = list(answer.ranks)
    assert len(stored) == len(rows), "one answer per query"
    assert {qid: stored.get(qid) for qid in confirmed} == confirmed, "every confirmed answer is there, as confirmed"
    with PreferenceStore(store_path) as store:
        assert len(store.comparisons()) == len(rows) >= len(confirmed)


# --------------------------------------------------------------------------------------
# WebOracle: a training loop posting queries and collecting answers as they come
# --------------------------------------------------------------------------------------


def _preference_loop_helpers():
    """PROMPTS and build from tests/agents/test_preference_loop.py (another folder's test module: not importable
    by name unless pytest collected that folder first)."""
    module = sys.modules.get("test_preference_loop")
    if module is None:
        path = Path(__file__).resolve().parents[1] / "agents" / "test_preference_loop.py"
        spec = importlib.util.spec_from_file_location("test_preference_loop", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.PROMPTS, module.build


def answer_through_the_page(server: LabelServer, session: str, choose) -> bool:
    """Answer the next query over HTTP as the page would; False when nothing is pending."""
    lease = take(server, session)
    if lease["done"]:
        return False
    choice = choose(lease["prompt"], lease["completions"])
    status, body = call(server, "POST", "/api/answer", {"lease_id": lease["lease_id"], "query_id": lease["query_id"],
                                                        "choice": choice})
    assert status == 200, body
    return True


def test_web_oracle_yields_answers_as_they_come(store_path, tmp_path) -> None:
    q1, q2, q3 = pairs(3)
    first = lambda prompt, completions: "first"  # noqa: E731
    with WebOracle(store_path) as oracle:
        t0 = time.perf_counter()
        assert list(oracle.answer([q1, q2])) == [] and time.perf_counter() - t0 < 1.0, "no one has answered: no wait"
        assert oracle.store.counts()["pending"] == 2
        server = oracle.serve(labeller="bob")
        assert answer_through_the_page(server, "session-a", first)
        got = list(oracle.answer([q1, q2]))
        assert [(a.query_id, a.ranks, a.labeller) for a in got] == [(q1.query_id, (0, 1), "bob")]
        assert list(oracle.answer([q1, q2])) == [], "each answer is handed over once"
        assert answer_through_the_page(server, "session-a", first)  # q2
        assert list(oracle.answer([q3])) == [], "only answers to the queries asked now"
        with PreferenceStore(tmp_path / "other.sqlite") as other:  # `collect` into another store
            answers = collect(oracle, [q2, q3], other)
            assert [a.query_id for a in answers] == [q2.query_id] and other.counts()["answers"] == 1

    with WebOracle(store_path, poll=5.0) as waiting:
        server = waiting.serve()
        threading.Timer(0.3, answer_through_the_page, args=(server, "session-b", first)).start()
        t0 = time.perf_counter()
        assert [a.query_id for a in waiting.answer([q3])] == [q3.query_id]
        assert time.perf_counter() - t0 < 4.0, "poll returns as soon as its queries are answered"
    with pytest.raises(ValueError, match="poll"):
        WebOracle(store_path, poll=-1)


def test_collect_with_a_web_oracle_writes_each_query_and_answer_once(store_path, monkeypatch) -> None:
    """The page stores the answer and WebOracle posts the queries: `collect` into that store writes neither again."""
    writes = {"add_queries": 0, "add_answers": 0}
    for method in writes:
        def counted(self, items, _method=method, _original=getattr(PreferenceStore, method)):
            writes[_method] += 1
            return _original(self, items)
        monkeypatch.setattr(PreferenceStore, method, counted)
    q1, q2 = pairs(2)
    first = lambda prompt, completions: "first"  # noqa: E731
    with WebOracle(store_path) as oracle, PreferenceStore(store_path) as loop_store:
        server = oracle.serve()
        assert collect(oracle, [q1, q2], loop_store) == [] and writes == {"add_queries": 1, "add_answers": 0}
        assert answer_through_the_page(server, "session-a", first)
        answers = collect(oracle, [q1, q2], loop_store)  # another connection to the page's store file
        assert [a.query_id for a in answers] == [q1.query_id]
        assert writes == {"add_queries": 2, "add_answers": 0}, "the page stored the answer: collect must not store it again"
        assert answer_through_the_page(server, "session-a", first)
        assert [a.query_id for a in collect(oracle, [q2], oracle.store)] == [q2.query_id]  # the oracle's own store
        assert writes == {"add_queries": 3, "add_answers": 0}
        assert loop_store.counts() == {"queries": 2, "answers": 2, "pending": 0}


def test_import_llm_gym_leaves_the_web_server_unloaded() -> None:
    code = "import sys, llm_gym; assert 'llm_gym.feedback.web' not in sys.modules, sorted(sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_training_loop_learns_from_answers_given_on_the_page(tiny_model, store_path) -> None:
    """PreferenceLoop + WebOracle: a labeller answers over HTTP while the agent trains; the reward model learns them."""
    PROMPTS, build = _preference_loop_helpers()

    web = WebOracle(store_path)
    loop, store, rm = build(tiny_model, store_path, oracle_wrapper=lambda synthetic: web, total_labels=24,
                            initial_labels=8, labels_per_round=8, steps_per_round=8,
                            on_no_answers="wait")  # the first round is asked before anyone has answered
    server = web.serve(labeller="web-labeller")
    gold, stop, answered = GoldScorer(), threading.Event(), []

    def labeller() -> None:
        better = lambda prompt, completions: "first" if np.diff(gold([prompt] * 2, completions))[0] <= 0 else "second"  # noqa: E731
        while not stop.is_set():
            if answer_through_the_page(server, "labeller-thread", better):
                answered.append(1)
            else:
                time.sleep(0.02)

    fits, calls = [], []
    fit, answer = loop.learner.fit, web.answer
    loop.learner.fit = lambda comparisons, fresh=False: fits.append(list(comparisons)) or fit(comparisons, fresh)

    def timed_answer(queries):
        t0 = time.perf_counter()
        out = list(answer(queries))
        calls.append(time.perf_counter() - t0)
        return iter(out)

    web.answer = timed_answer

    def wait_for_labels(agent, step) -> bool:  # after round 1, let the person catch up before round 2
        deadline = time.monotonic() + 30
        while len(answered) < 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        return True

    before = rm.score(PROMPTS, [" great ."] * len(PROMPTS))
    thread = threading.Thread(target=labeller, daemon=True)
    thread.start()
    try:
        loop.learn(total_steps=24, callback=wait_for_labels)
    finally:
        stop.set()
        thread.join(timeout=10)
        web.close()
    assert max(calls) < 5.0, "asking never waited for the person"
    assert fits, "the reward model was trained"
    trained_on = {c.labeller for c in fits[-1]}
    assert trained_on == {"web-labeller"} and len(fits[-1]) >= 8
    assert not np.allclose(before, rm.score(PROMPTS, [" great ."] * len(PROMPTS)))
    assert store.counts()["queries"] == 24 and store.counts()["answers"] == len(answered)
    store.close()


# --------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------


def test_cli_label_web_serves_until_ctrl_c(store_path, monkeypatch, capsys) -> None:
    from llm_gym.app.cli import main

    with PreferenceStore(store_path) as store:
        store.add_queries(pairs(2))
    seen = {}

    def serve_one_request(self) -> None:  # instead of serving forever: look at the page once, then Ctrl-C
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        with urllib.request.urlopen(self.url, timeout=10) as r:
            seen["status"] = r.status
        self._httpd.shutdown()
        raise KeyboardInterrupt

    monkeypatch.setattr(LabelServer, "serve_forever", serve_one_request)
    assert main(["label", str(store_path), "--web", "--token", "cli-test-token-0123456789", "--lease-seconds", "60"]) == 0
    out = capsys.readouterr().out
    assert "2 pending of 2 queries" in out and "after 60 s" in out and "stopped" in out
    assert "/?token=cli-test-token-0123456789" in out and seen["status"] == 200

    assert main(["label", str(store_path), "--web", "--token", "cli-test-token-0123456789",
                 "--origin", "https://labels.example.org"]) == 0
    assert "through the proxy, https://labels.example.org/?token=cli-test-token-0123456789" in capsys.readouterr().out
    assert main(["label", str(store_path), "--web", "--origin", "labels.example.org"]) == 2
    assert "scheme://host[:port]" in capsys.readouterr().err
    assert main(["label", str(store_path), "--web", "--name", "x" * 101]) == 2
    assert "labeller must be a name" in capsys.readouterr().err
    assert main(["label", str(store_path), "--web", "--host", "0.0.0.0"]) == 2
    assert "an access token is required" in capsys.readouterr().err
    assert main(["label", str(store_path), "--web", "--limit", "3"]) == 2
    assert main(["label", str(store_path), "--web", "--port", "-1"]) == 2
    assert main(["label", str(store_path), "--web", "--lease-seconds", "0"]) == 2
    assert "lease_seconds" in capsys.readouterr().err
