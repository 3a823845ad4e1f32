"""lateseq's cached properties take no lock (Python 3.11's ``functools.cached_property``
takes one per property, shared by every instance): a process forked while another thread
computed one hung at the child's first use (s53A: 4 DataLoader children in 70)."""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import threading

from forking import answer_of_forked_child

import lateseq
from lateseq._compat import cached_property


def test_no_class_of_lateseq_caches_through_functools_cached_property():
    found = []
    for info in pkgutil.walk_packages(lateseq.__path__, "lateseq."):
        if info.name.endswith("__main__"):  # (importing it runs the CLI)
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__:
                found += [f"{cls.__qualname__}.{name}" for name, attr in vars(cls).items()
                          if isinstance(attr, functools.cached_property)]
    assert not found


def test_a_child_forked_while_another_thread_computes_a_cached_property_computes_its_own():
    entered, release = threading.Event(), threading.Event()

    class Plan:
        @cached_property
        def batches(self) -> int:
            if threading.current_thread().name == "computing":  # the parent's thread: holds on, mid-computation
                entered.set()
                release.wait(30)
            return 7

    computing = threading.Thread(target=lambda: Plan().batches, name="computing")
    computing.start()
    assert entered.wait(30)
    try:
        answer = answer_of_forked_child(lambda: bytes([Plan().batches]))
    finally:
        release.set()
        computing.join()
    assert answer == bytes([7])


def test_a_cached_value_is_computed_once_and_kept_on_the_instance():
    calls = []

    class Thing:
        @cached_property
        def value(self) -> list[int]:
            calls.append(1)
            return [len(calls)]

    thing, other = Thing(), Thing()
    assert thing.value is thing.value and thing.value == [1] and other.value == [2]
    assert Thing.value.__doc__ is None and isinstance(Thing.value, cached_property)
