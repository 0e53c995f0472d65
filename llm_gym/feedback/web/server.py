"""The labelling page's HTTP server: `LabelServer`, `serve` and the request handler.

``llm-gym label STORE --web`` (or `serve`) starts a small HTTP server from the standard
library (`http.server.ThreadingHTTPServer`: no web framework to install or keep up to
date for a page with three JSON endpoints). The page shows one pending query at a time:
the prompt and two completions side by side (choose first / second / tie / skip, by click
or with the keys ``1`` ``2`` ``t`` ``s``), or K completions to rank (click or type their
numbers best first, ``Enter`` submits, ``Backspace`` undoes, ``s`` skips). Each answer is
committed to the SQLite `PreferenceStore` before the page is told it is saved. The page
itself is three files shipped beside this module (``page.html``, ``static/app.css``,
``static/app.js``), read once with `importlib.resources`.

Work sharing. Each query is handed out under a *lease* (`llm_gym.feedback.leases`):
one labelling session (a browser tab) holds it for ``lease_seconds``; two sessions never
get the same pending query at once, and a query not answered in time goes back to the
queue. The answer is submitted with the lease id, so a replayed or double-clicked
submission stores nothing new and gets the same confirmation. A skipped query is not
handed straight back to the session that skipped it while other queries are pending.

Security. The server listens on loopback (127.0.0.1) unless told otherwise, and every
request must carry a random access token (`secrets.token_urlsafe`, printed in the page's
URL at start, or given): the URL's ``?token=`` sets an HttpOnly, SameSite=Strict cookie for
the page and its two local files (``/static/app.js``, ``/static/app.css``: nothing is
fetched from the internet), and API calls send it in the ``X-LLM-Gym-Token`` header.
State-changing requests (POST) are refused (403) without that header, or when their
Origin/Referer is not the server's own origin (or the ``public_origin`` it was given, e.g.
``https://labels.example.org`` for an HTTPS proxy in front of it), or when their body is not
JSON; while the server is on loopback, a Host header other than a loopback name (or the
public origin's) is refused (DNS rebinding). Binding to another address requires an
explicit token and logs a warning. Completions are inserted into the page as text
(``textContent``), never as HTML, and a Content-Security-Policy without inline scripts
backs that up.

API (JSON; errors are 4xx with ``{"error": "what is wrong and how to fix it"}`` and change
nothing; an unexpected failure is logged and answered with a JSON 500):

``POST /api/next`` ``{"session": ID, "labeller": NAME}``
    lease the next pending query to this session: ``{"done": false, "query_id",
    "lease_id", "prompt", "completions", "k", "expires_in", "progress"}``, or
    ``{"done": true, "progress"}`` when nothing is pending. (POST, not GET: it takes a lease.)
    A session that still holds a query gets it back, now under the `labeller` it sent: the
    answer is stored under the name of the session's latest /api/next.
``POST /api/answer`` ``{"lease_id", "query_id", "choice": "first"|"second"|"tie"|"skip"}``
    or ``{"lease_id", "query_id", "ranking": [indices of the completions, best first]}``:
    ``{"ok": true, "outcome": "answered"|"skipped", "query_id", "lease_id", "ranks"}``.
``GET /api/progress``
    ``{"answered", "pending", "labelling", "answers", "queries"}``.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import json
import logging
import re
import secrets
import socket
import sys
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from os import PathLike
from typing import Any
from urllib.parse import parse_qs, urlsplit

from llm_gym.core.preferences import PAIRWISE_CHOICES, Query
from llm_gym.feedback.leases import LeaseConflict, active_leases, close_lease, lease_next
from llm_gym.feedback.store import PreferenceStore

__all__ = ["LabelServer", "serve", "TOKEN_HEADER", "DEFAULT_LEASE_SECONDS", "is_loopback"]

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-LLM-Gym-Token"
"""The request header that carries the access token on API calls."""

DEFAULT_LEASE_SECONDS = 300.0
"""How long a labeller holds a query before it goes back to the queue, unless told otherwise."""

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'self'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-.~]{16,256}")
_SESSION_RE = re.compile(r"[A-Za-z0-9_\-]{8,64}")
_ORIGIN_RE = re.compile(r"(https?)://([a-z0-9](?:[a-z0-9.\-]*[a-z0-9])?|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?")
_MAX_BODY = 64 * 1024
_MAX_LABELLER = 100


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1); any other name counts as the network."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """The host name of a ``Host`` header or netloc, lowercased and without IPv6 brackets or port ('' if malformed)."""
    try:
        return urlsplit("//" + host).hostname or ""
    except ValueError:  # e.g. an unclosed '[' or a port that is not a number
        return ""


def _check_labeller(name: object, what: str = "labeller") -> None:
    """A ValueError unless `name` is a labeller name the page accepts: 1 to 100 printable characters, not only spaces."""
    if not (isinstance(name, str) and name.strip() and len(name) <= _MAX_LABELLER and name.isprintable()):
        raise ValueError(f"{what} must be a name of 1 to {_MAX_LABELLER} printable characters, got {name!r}")


def _public_origin(origin: str) -> str:
    """`origin` as ``scheme://host[:port]`` in lowercase (one trailing '/' dropped); ValueError when it is not one."""
    normal = origin.lower().removesuffix("/") if isinstance(origin, str) else ""
    match = _ORIGIN_RE.fullmatch(normal)
    if match is None or (match[3] is not None and not 0 < int(match[3]) <= 65535):
        raise ValueError(
            f"public_origin must be scheme://host[:port] as the browser shows it behind the proxy, e.g. "
            f"https://labels.example.org or https://10.0.0.5:8443 (no path), got {origin!r}"
        )
    return normal


def _check_lease_seconds(lease_seconds: object) -> None:
    """A ValueError unless `lease_seconds` is a positive number of seconds (below 1e9)."""
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)) or not 0 < lease_seconds < 1e9:
        raise ValueError(f"lease_seconds must be a positive number of seconds, got {lease_seconds!r}")


def _open_store(store: PreferenceStore | str | PathLike[str]) -> tuple[PreferenceStore, bool]:
    """The store, and whether it was opened here (and so is closed here)."""
    if isinstance(store, PreferenceStore):
        return store, False
    return PreferenceStore(store), True


class _RequestError(Exception):
    """A request refused with an HTTP status and a message that says how to fix it."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


class LabelServer:
    """The labelling page and its JSON API over one preference store.

    Args:
        store: a `PreferenceStore`, or the path of one (opened here and closed by `close`).
        host: the address to listen on; loopback by default. Any other address makes the
            page reachable from the network and requires an explicit `token`.
        port: the TCP port; 0 picks a free one (see `port` / `url`).
        token: the access token every request must carry (at least 16 URL-safe characters);
            None generates a random one.
        lease_seconds: how long a labeller holds a query before it goes back to the queue.
        labeller: the labeller name answers get when the page gives none (1 to 100 printable characters).
        public_origin: the ``scheme://host[:port]`` the page is also reached at, e.g.
            ``https://labels.example.org`` for an HTTPS reverse proxy in front of this
            server: POSTs from that origin are accepted as the page's own (and, on
            loopback, its host name in the Host header).

    Use `serve_forever` (blocking) or `start` (a background thread), then `close`; or `serve`.

    Raises:
        ValueError: for a non-loopback `host` without a `token`, a malformed token, a port
            outside 0..65535, a non-positive `lease_seconds`, a malformed `labeller` or
            `public_origin`.
        OSError: when the address cannot be bound (port in use, unknown host, no IPv6).
    """

    def __init__(
        self,
        store: PreferenceStore | str | PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        labeller: str = "human",
        public_origin: str | None = None,
    ) -> None:
        self.loopback = is_loopback(host)
        if token is None:
            if not self.loopback:
                raise ValueError(
                    f"binding to {host} makes the labelling page reachable from the network, so an access token is "
                    "required: pass --token (token=...) with a long random value, e.g. from "
                    "`python -c \"import secrets; print(secrets.token_urlsafe())\"`, or bind to 127.0.0.1"
                )
            token = secrets.token_urlsafe(24)
        if not isinstance(token, str) or not _TOKEN_RE.fullmatch(token):
            raise ValueError(
                "the access token must be 16 to 256 URL-safe characters (letters, digits, - _ . ~), e.g. from "
                "`python -c \"import secrets; print(secrets.token_urlsafe())\"`"
            )
        _check_lease_seconds(lease_seconds)
        _check_labeller(labeller)
        self.public_origin = None if public_origin is None else _public_origin(public_origin)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int in 0..65535 (0 = a free port), got {port!r}")
        self.token, self.lease_seconds, self.labeller = token, float(lease_seconds), labeller
        self.store, self._owns_store = _open_store(store)
        try:
            server_class = _IPv6Server if ":" in host else _Server
            try:
                self._httpd = server_class((host.strip("[]"), port), _Handler)
            except OSError as err:
                raise OSError(err.errno, f"cannot listen on {host} port {port}: {err.strerror or err}") from err
        except BaseException:
            if self._owns_store:
                self.store.close()
            raise
        self._httpd.app = self
        self.host = host
        self.port: int = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._serving = self._closed = False
        if not self.loopback:
            log.warning(
                "the labelling page listens on %s:%d and is reachable from the network; anyone who has the token can "
                "label. Plain HTTP: use it on a trusted network only, or behind an HTTPS proxy whose address you pass "
                "as --origin (public_origin=...).", host, self.port,
            )

    @property
    def origin(self) -> str:
        """``http://host:port`` as a browser on this machine reaches it (loopback for a wildcard address; an IPv6
        address in brackets)."""
        host = self.host.strip("[]")
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The page's address with the access token: open this in a browser."""
        return f"{self.origin}/?token={self.token}"

    def serve_forever(self) -> None:
        """Serve requests until `close` is called from another thread (or Ctrl-C in the main thread).

        Returns at once when the server is already closed.
        """
        with self._lock:
            if self._closed:
                return
            self._serving = True  # from here `close` stops this loop (shutdown before the loop starts stops it too)
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            with self._lock:
                self._serving = False

    def start(self) -> LabelServer:
        """Serve in a background (daemon) thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.serve_forever, name=f"llm-gym-label:{self.port}", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving (in whatever thread `serve_forever` runs) and release the port (and the store, if this
        server opened it). Idempotent."""
        with self._lock:
            self._closed, serving = True, self._serving
        if serving:
            self._httpd.shutdown()  # waits for the loop to end; never called without one (it would wait forever)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._httpd.server_close()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> LabelServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LabelServer({self.store.path!r}, origin={self.origin!r})"

    # -- what the handler asks --------------------------------------------------------------

    def check_token(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    @property
    def cookie_name(self) -> str:
        # Cookies are shared across ports of one host: one name per port keeps two servers apart.
        return f"llm_gym_token_{self.port}"

    def progress(self) -> dict[str, int]:
        counts = self.store.counts()
        return {
            "answered": counts["queries"] - counts["pending"],
            "pending": counts["pending"],
            "labelling": active_leases(self.store),
            "answers": counts["answers"],
            "queries": counts["queries"],
        }

    def next_query(self, body: Any) -> dict[str, Any]:
        body = _object(body, allowed={"session", "labeller"}, example='{"session": "a1b2c3d4e5f6", "labeller": "alice"}')
        session = body.get("session")
        if not isinstance(session, str) or not _SESSION_RE.fullmatch(session):
            raise _RequestError(
                HTTPStatus.BAD_REQUEST,
                "'session' must be 8 to 64 letters, digits, '-' or '_' identifying this labelling tab "
                f"(got {session!r})",
            )
        labeller = body.get("labeller", self.labeller)
        try:
            _check_labeller(labeller, "'labeller'")
        except ValueError as err:
            raise _RequestError(HTTPStatus.BAD_REQUEST, str(err)) from None
        lease = lease_next(self.store, session, labeller=labeller.strip(), lease_seconds=self.lease_seconds)
        if lease is None:
            return {"done": True, "progress": self.progress()}
        q = lease.query
        return {
            "done": False,
            "query_id": q.query_id,
            "lease_id": lease.lease_id,
            "prompt": q.prompt,
            "completions": list(q.completions),
            "k": q.k,
            "labeller": lease.labeller,
            "expires_in": self.lease_seconds,
            "progress": self.progress(),
        }

    def answer(self, body: Any) -> dict[str, Any]:
        example = '{"lease_id": "...", "query_id": "...", "choice": "first"}'
        body = _object(body, allowed={"lease_id", "query_id", "choice", "ranking"}, example=example)
        for key in ("lease_id", "query_id"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise _RequestError(
                    HTTPStatus.BAD_REQUEST, f"missing {key!r}: send the lease_id and query_id that /api/next returned, e.g. {example}"
                )
        try:
            query = self.store.get_query(body["query_id"])
        except KeyError:
            raise _RequestError(
                HTTPStatus.NOT_FOUND, f"unknown query_id {body['query_id']!r}: this store has no such query; "
                "answer the query_id that /api/next returned"
            ) from None
        ranks = _ranks_from_body(body, query)
        try:
            outcome = close_lease(self.store, body["lease_id"], ranks, query_id=query.query_id)
        except KeyError:
            raise _RequestError(
                HTTPStatus.NOT_FOUND, f"unknown lease_id {body['lease_id']!r}: ask /api/next for a query and answer it with "
                "the lease_id it returns"
            ) from None
        except LeaseConflict as err:
            raise _RequestError(HTTPStatus.CONFLICT, str(err)) from None
        except ValueError as err:
            raise _RequestError(HTTPStatus.BAD_REQUEST, str(err)) from None
        return {
            "ok": True,
            "outcome": outcome.outcome,
            "query_id": outcome.query_id,
            "lease_id": outcome.lease_id,
            "ranks": None if outcome.ranks is None else list(outcome.ranks),
        }


def _object(body: Any, *, allowed: set[str], example: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _RequestError(HTTPStatus.BAD_REQUEST, f"the body must be a JSON object, e.g. {example}")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise _RequestError(HTTPStatus.BAD_REQUEST, f"unknown field(s) {unknown}; this endpoint takes {sorted(allowed)}")
    return body


def _ranks_from_body(body: dict[str, Any], query: Query) -> tuple[int, ...] | None:
    """The ranks a submission gives `query` (None for a skip); a 400 for anything malformed."""
    if ("choice" in body) == ("ranking" in body):
        raise _RequestError(
            HTTPStatus.BAD_REQUEST,
            "give exactly one of 'choice' (\"first\", \"second\", \"tie\" or \"skip\") or 'ranking' "
            "(the completion indices, best first)",
        )
    k = query.k
    if "choice" in body:
        choice = body["choice"]
        if not isinstance(choice, str) or (choice != "skip" and choice not in PAIRWISE_CHOICES):
            raise _RequestError(
                HTTPStatus.BAD_REQUEST, f"unknown choice {choice!r}; use \"first\", \"second\", \"tie\" or \"skip\""
            )
        if choice == "skip":
            return None
        if k != 2:
            raise _RequestError(
                HTTPStatus.BAD_REQUEST,
                f"query {query.query_id} ranks {k} completions: send 'ranking' (e.g. {list(range(k))}, best first) "
                "or choice \"skip\"",
            )
        return PAIRWISE_CHOICES[choice]
    ranking = body["ranking"]
    if (
        not isinstance(ranking, list)
        or any(isinstance(i, bool) or not isinstance(i, int) for i in ranking)
        or sorted(ranking) != list(range(k))
    ):
        raise _RequestError(
            HTTPStatus.BAD_REQUEST,
            f"'ranking' must list each completion index 0 to {k - 1} once, best first (e.g. {list(range(k))[::-1]}); "
            f"got {ranking!r}",
        )
    ranks = [0] * k
    for position, index in enumerate(ranking):
        ranks[index] = position
    return tuple(ranks)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog; the standard library's 5 resets bursts of 20-40 page loads
    app: LabelServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-request is one debug line (the page retries; nothing is stored half);
        anything else is logged with its traceback (the standard library prints it to stderr instead)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):
            log.debug("client %s hung up mid-request (%s)", client_address[0], type(exc).__name__)
        else:
            log.error("request from %s failed", client_address[0], exc_info=exc)


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "llm-gym-label"
    sys_version = ""
    timeout = 60  # seconds a connection may sit idle mid-request

    # -- plumbing ------------------------------------------------------------------------

    @property
    def app(self) -> LabelServer:
        return self.server.app

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Never the query string: it may hold the token.
        log.debug("%s %s %s", self.command, urlsplit(self.path).path, code)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s: %s", self.address_string(), (format % args).split("?", 1)[0])

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**_SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _error(self, err: _RequestError) -> None:
        self._json(err.status, {"error": err.message})

    def _cookie_token(self) -> str | None:
        # Parsed by hand: SimpleCookie stops at the first cookie it cannot parse (another app's on this host,
        # e.g. `ui=dark mode`) and drops ours after it.
        for pair in "; ".join(self.headers.get_all("Cookie", [])).split(";"):
            name, sep, value = pair.partition("=")
            if sep and name.strip() == self.app.cookie_name:
                return value.strip()
        return None

    def _check_host(self) -> None:
        """On loopback, refuse Host names that are not loopback (a DNS-rebinding page would send its own)."""
        if not self.app.loopback:
            return
        host = self.headers.get("Host", "")
        name = _host_name(host)
        allowed = {self.app.host.strip("[]").lower()}
        if self.app.public_origin is not None:
            allowed.add(urlsplit(self.app.public_origin).hostname)
        if not is_loopback(name) and name not in allowed:
            raise _RequestError(
                HTTPStatus.FORBIDDEN,
                f"unexpected Host header {host!r}: open the page at {self.app.origin} (the address the server printed)",
            )

    def _check_token(self) -> None:
        """The token in the header or the page's cookie (a 401 without it)."""
        if not (self.app.check_token(self.headers.get(TOKEN_HEADER)) or self.app.check_token(self._cookie_token())):
            raise _RequestError(
                HTTPStatus.UNAUTHORIZED,
                f"missing or wrong access token: open the page through the URL the server printed (…/?token=…), "
                f"or send the token in the {TOKEN_HEADER} header",
            )

    def _check_same_origin(self) -> None:
        """A state-changing request must come from this server's own page (or from a non-browser client)."""
        own = f"http://{self.headers.get('Host', '')}".lower()
        allowed = {own} if self.app.public_origin is None else {own, self.app.public_origin}
        expected = " or ".join(repr(o) for o in sorted(allowed))
        origin = self.headers.get("Origin")
        if origin is not None:
            if origin.lower() not in allowed:
                raise _RequestError(HTTPStatus.FORBIDDEN, f"cross-site request refused: Origin {origin!r} is not {expected}")
            return
        referer = self.headers.get("Referer")
        if referer is not None:
            parts = urlsplit(referer)
            if f"{parts.scheme}://{parts.netloc}".lower() not in allowed:
                raise _RequestError(HTTPStatus.FORBIDDEN, f"cross-site request refused: Referer is not from {expected}")

    def _read_json(self) -> Any:
        if self.headers.get("Transfer-Encoding"):
            raise _RequestError(HTTPStatus.LENGTH_REQUIRED, "send the JSON body with a Content-Length, not chunked")
        length = self.headers.get("Content-Length")
        if length is None or not re.fullmatch(r"[0-9]{1,9}", length):  # not isdigit(): it takes '²', which int() refuses
            raise _RequestError(HTTPStatus.LENGTH_REQUIRED, "a POST needs a Content-Length header (bytes) and a JSON body")
        if int(length) > _MAX_BODY:
            raise _RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {_MAX_BODY} bytes")
        raw = self.rfile.read(int(length))
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _RequestError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                f"send the body as JSON with Content-Type: application/json (got {content_type or 'none'!r})",
            )
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as err:  # ValueError: bad UTF-8 or JSON, or a number of over 4300 digits
            reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
            raise _RequestError(
                HTTPStatus.BAD_REQUEST, f"the body is not valid UTF-8 JSON ({reason}); send a JSON object"
            ) from None
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _RequestError(
                HTTPStatus.BAD_REQUEST, "the body has a string that is not valid Unicode (a lone surrogate such as \\ud800)"
            ) from None
        return body

    def _handle(self, route: Callable[[], None]) -> None:
        """Run `route`; a refusal is answered with its 4xx, anything unexpected is logged and answered with a JSON 500."""
        try:
            route()
        except _RequestError as err:
            self.close_connection = True  # a POST body may be unread: it must not be taken for the next request
            self._error(err)
        except ConnectionError:  # the client went away mid-reply: no one is left to answer
            self.close_connection = True
        except Exception:
            log.exception("%s %s failed", self.command, urlsplit(self.path).path)
            self.close_connection = True
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {
                "error": "the labelling server failed on this request (its log has the details); try again: "
                         "an answer is never stored twice",
            })

    # -- routes --------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._handle(self._get)

    do_HEAD = do_GET

    def _get(self) -> None:
        self._check_host()
        parts = urlsplit(self.path)
        if parts.path == "/":
            self._page(parse_qs(parts.query).get("token", [None])[0])
            return
        self._check_token()
        if parts.path in _STATIC:
            content_type, body = _STATIC[parts.path]
            self._send(HTTPStatus.OK, body, content_type)
        elif parts.path == "/api/progress":
            self._json(HTTPStatus.OK, self.app.progress())
        elif parts.path in ("/api/next", "/api/answer"):
            raise _RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{parts.path} takes a POST with a JSON body")
        else:
            raise _RequestError(HTTPStatus.NOT_FOUND, f"no such page {parts.path!r}; the API is /api/next, /api/answer, /api/progress")

    def _page(self, query_token: str | None) -> None:
        cookie_ok = self.app.check_token(self._cookie_token())
        if not (self.app.check_token(query_token) or (query_token is None and cookie_ok)):
            body = (
                "401: this labelling page needs its access token. Open the URL that `llm-gym label --web` printed "
                "(it ends in ?token=...).\n"
            ).encode()
            self._send(HTTPStatus.UNAUTHORIZED, body, "text/plain; charset=utf-8")
            return
        extra = {}
        if query_token is not None:
            extra["Set-Cookie"] = f"{self.app.cookie_name}={self.app.token}; Path=/; HttpOnly; SameSite=Strict"
        page = _PAGE.format(
            token=html.escape(self.app.token), labeller=html.escape(self.app.labeller), lease=int(self.app.lease_seconds)
        )
        self._send(HTTPStatus.OK, page.encode(), "text/html; charset=utf-8", extra)

    def do_POST(self) -> None:
        self._handle(self._post)

    def _post(self) -> None:
        self._check_host()
        if self.headers.get(TOKEN_HEADER) is None:
            raise _RequestError(
                HTTPStatus.FORBIDDEN,
                f"a POST must carry the access token in the {TOKEN_HEADER} header (cross-site protection)",
            )
        if not self.app.check_token(self.headers.get(TOKEN_HEADER)):
            raise _RequestError(HTTPStatus.UNAUTHORIZED, f"wrong access token in {TOKEN_HEADER}; use the one the server printed")
        self._check_same_origin()
        path = urlsplit(self.path).path
        if path not in ("/api/next", "/api/answer"):
            raise _RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint {path!r}; POST to /api/next or /api/answer")
        body = self._read_json()
        result = self.app.next_query(body) if path == "/api/next" else self.app.answer(body)
        self._json(HTTPStatus.OK, result)  # the store committed the answer before this line

    def _refuse_method(self) -> None:
        self._handle(self._other_method)

    def _other_method(self) -> None:
        self._check_host()
        self._check_token()  # who may not use the server learns nothing, not even which methods it takes
        self.close_connection = True
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            json.dumps({"error": f"method {self.command} is not used here; GET the page, POST to the API"}).encode(),
            "application/json; charset=utf-8",
            {"Allow": "GET, HEAD, POST"},
        )

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method


# --------------------------------------------------------------------------------------
# Serving from the command line
# --------------------------------------------------------------------------------------


def serve(
    store: PreferenceStore | str | PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    labeller: str = "human",
    public_origin: str | None = None,
    on_start: Callable[[LabelServer], None] | None = None,
) -> None:
    """Serve the labelling page until Ctrl-C; `on_start(server)` is called once it listens (announce `server.url`).

    The arguments are `LabelServer`'s. Every answer is committed as it is given, so stopping
    the server loses nothing.
    """
    with LabelServer(store, host=host, port=port, token=token, lease_seconds=lease_seconds, labeller=labeller,
                     public_origin=public_origin) as server:
        if on_start is not None:
            on_start(server)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


# --------------------------------------------------------------------------------------
# The page: HTML, CSS and JavaScript shipped beside this module (nothing from the internet)
# --------------------------------------------------------------------------------------


def _asset(name: str) -> bytes:
    """A file of the page, from this package (a folder or a wheel alike)."""
    return resources.files(__package__).joinpath(name).read_bytes()


_PAGE = _asset("page.html").decode()  # a str.format template: {token}, {labeller}, {lease}
_STATIC = {
    "/static/app.js": ("text/javascript; charset=utf-8", _asset("static/app.js")),
    "/static/app.css": ("text/css; charset=utf-8", _asset("static/app.css")),
}
