"""keep_freed_memory: on glibc a freed large block stays in the process for reuse; elsewhere nothing changes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llm_gym.infra import allocator

# A child process mallocs 256 MB, touches every page, frees it, and prints the resident set (MB) before and after
# the free. Process-wide malloc settings must not leak into the test process, hence the subprocess.
_CHILD = """
import ctypes, ctypes.util, sys, threading, psutil
from llm_gym.infra.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
out = []
def block():
    n = 256 * 2**20
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    held = psutil.Process().memory_info().rss / 2**20
    libc.free(p)
    out.append((held, psutil.Process().memory_info().rss / 2**20))
if sys.argv[2] == "thread":  # a thread started after the call: glibc would give it its own heap
    t = threading.Thread(target=block)
    t.start()
    t.join()
else:
    block()
print(applied, *out[0])
"""

glibc_only = pytest.mark.skipif(allocator._glibc() is None, reason="mallopt's parameters are glibc's")


def _child(mode: str, where: str = "main") -> tuple[bool, float, float]:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, where], capture_output=True, text=True,
                         check=True).stdout
    applied, held, after = out.split()
    return applied == "True", float(held), float(after)


@glibc_only
@pytest.mark.parametrize("where", ["main", "thread"])
def test_freed_block_stays_in_the_process_for_reuse(where: str) -> None:
    applied, held, after = _child("keep", where)
    assert applied
    assert held - after < 16  # the 256 MB stay resident, ready for the next large tensor, in any thread


@glibc_only
@pytest.mark.parametrize("where", ["main", "thread"])
def test_without_it_glibc_returns_the_block(where: str) -> None:
    applied, held, after = _child("default", where)
    assert not applied
    assert held - after > 200  # glibc's default: a block over the mmap threshold goes back to the OS on free


def test_not_glibc_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_glibc", lambda: None)
    assert allocator.keep_freed_memory() is False


@pytest.mark.parametrize("value", ["0", "false", "No", " off "])
def test_environment_variable_turns_it_off(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(allocator.ENV_VAR, value)
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: pytest.fail("applied despite the opt-out"))
    assert allocator.keep_freed_memory_from_env() is False


def test_command_applies_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_gym.app import cli

    calls: list[bool] = []
    monkeypatch.setattr(allocator, "keep_freed_memory_from_env", lambda: calls.append(True) or True)
    monkeypatch.setattr(cli, "build_parser", _parser_with_noop)
    assert cli.main(["noop"]) == 0
    assert calls == [True]


def _parser_with_noop():
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("noop").set_defaults(func=lambda args: 0)
    return parser
