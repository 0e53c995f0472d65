"""The local labelling page: people answer comparison queries in a browser, into the preference store.

``llm-gym label STORE --web`` (or `serve`) starts it; `WebOracle` lets a training loop pose
its queries there and take the answers as they come in. One job per file:

    server.py        LabelServer, serve and the request handler: the JSON API, tokens, origin checks
    oracle.py        WebOracle, the PreferenceOracle a training loop uses with the page
    page.html        the page (a str.format template for the token, labeller and lease time)
    static/app.css   its style sheet, served at /static/app.css
    static/app.js    its script, served at /static/app.js

The leases that share the queue between labellers are `llm_gym.feedback.leases`.
"""

from llm_gym.feedback.web.oracle import WebOracle
from llm_gym.feedback.web.server import DEFAULT_LEASE_SECONDS, TOKEN_HEADER, LabelServer, is_loopback, serve

__all__ = ["LabelServer", "WebOracle", "serve", "TOKEN_HEADER", "DEFAULT_LEASE_SECONDS", "is_loopback"]
