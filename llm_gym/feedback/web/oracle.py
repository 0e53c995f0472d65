"""`WebOracle`: people labelling on the web page, as the `PreferenceOracle` of a training loop.

It posts the loop's queries to the store the page (`llm_gym.feedback.web.server`) serves
from and hands back, without waiting, the answers that have come in. The page writes each
answer to that store as it is given; the oracle only reads them, and declares the store as
its own (`PreferenceOracle.store`) so that `collect` into the same store writes no query or
answer a second time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from os import PathLike

from llm_gym.core.preferences import Answer, Query
from llm_gym.feedback.oracles import PreferenceOracle
from llm_gym.feedback.store import PreferenceStore, answer_id
from llm_gym.feedback.web.server import DEFAULT_LEASE_SECONDS, LabelServer, _check_lease_seconds, _open_store

__all__ = ["WebOracle"]


class WebOracle(PreferenceOracle):
    """People labelling on the web page, as an oracle a training loop calls without waiting for them.

    `answer(queries)` adds the queries to the store the page serves from and yields, at
    once, the answers already stored for any of *these* queries that it has not yielded
    before; queries not answered yet stay pending on the page. Answers to queries of an
    earlier call are yielded when those queries are posed again, which is what
    `PreferenceLoop` does with every pending query each round (and `collect` accepts only
    answers to the queries it passed). When the oracle and the loop share one store file,
    the page's answers are in the loop's store the moment they are given (and `collect`
    writes neither them nor the queries again), so the reward model trains on them at its
    next refit either way.

    Args:
        store: the preference store the page serves (a path, or an open `PreferenceStore`).
        lease_seconds: for the server `serve` starts: how long a labeller holds a query.
        poll: seconds `answer` keeps looking for answers to its queries before it returns
            (0, the default, looks once: training never waits for a person).

    >>> import tempfile, os
    >>> from llm_gym.core.preferences import Query
    >>> path = os.path.join(tempfile.mkdtemp(), "labels.sqlite")
    >>> oracle = WebOracle(path)
    >>> list(oracle.answer([Query("the film was", (" great .", " dull ."))]))  # nobody has answered yet
    []
    >>> oracle.store.counts()["pending"]
    1
    >>> oracle.close()
    """

    name = "web"

    def __init__(
        self,
        store: PreferenceStore | str | PathLike[str],
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll: float = 0.0,
    ) -> None:
        if isinstance(poll, bool) or not isinstance(poll, (int, float)) or not 0 <= poll < 1e6:
            raise ValueError(f"poll must be a number of seconds >= 0 (0 = never wait), got {poll!r}")
        _check_lease_seconds(lease_seconds)
        self.lease_seconds, self.poll = float(lease_seconds), float(poll)
        self.store: PreferenceStore
        self.store, self._owns_store = _open_store(store)
        self._yielded: set[str] = set()
        self._servers: list[LabelServer] = []

    def answer(self, queries: Sequence[Query]) -> Iterator[Answer]:
        """Post `queries` to the page and yield the answers stored for them that were not yielded before."""
        queries = list(queries)
        self.store.add_queries(queries)
        deadline = time.monotonic() + self.poll
        order = list(dict.fromkeys(q.query_id for q in queries))
        waiting = set(order)
        while True:
            for qid in [qid for qid in order if qid in waiting]:
                stored = self.store.answers(qid)
                if stored:
                    waiting.discard(qid)
                for a in stored:
                    key = answer_id(a)
                    if key not in self._yielded:
                        self._yielded.add(key)
                        yield a
            if not waiting or time.monotonic() >= deadline:
                return
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def serve(self, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None, labeller: str = "human") -> LabelServer:
        """Start the labelling page on this oracle's store in a background thread; open its `url` in a browser.

        `close` stops it. For a page in another process, run ``llm-gym label STORE --web``.
        """
        server = LabelServer(self.store, host=host, port=port, token=token, lease_seconds=self.lease_seconds,
                             labeller=labeller).start()
        self._servers.append(server)
        return server

    def close(self) -> None:
        """Stop the servers `serve` started, and close the store if this oracle opened it."""
        for server in self._servers:
            server.close()
        self._servers.clear()
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> WebOracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
