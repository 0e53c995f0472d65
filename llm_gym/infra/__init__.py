"""Plumbing with no reinforcement learning in it.

    atomic.py        atomic folder and JSON writes (a crash leaves the old version or the new one)
    distributed.py   Distributed: data parallelism over accelerate / torchrun, a single-process stand-in without one
    logger.py        Logger: the one logger passed to every component, over TensorBoard's writer
    configio.py      config dataclasses <-> TOML/JSON, strict, with dotted paths and "did you mean"
"""
