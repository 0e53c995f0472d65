"""Who answers "which completion is better", and where the answers are kept.

    oracles.py       PreferenceOracle and collect(); synthetic, recorded (file replay) and terminal oracles
    store.py         PreferenceStore: the durable SQLite store of queries and answers (never loses an answer)
    leases.py        the work queue over the store that lets several labellers share it (lease_next, close_lease)
    web/             the local labelling page (LabelServer, serve) and WebOracle for training loops
"""
