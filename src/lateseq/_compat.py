"""What the Python versions lateseq supports do differently, made one way here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class cached_property(Generic[T]):  # noqa: N801 - a drop-in for functools.cached_property
    """``functools.cached_property`` without the lock Python 3.11's takes (3.12 dropped it):
    one lock per property, shared by every instance, so threads computing it on different
    objects waited on each other, and a process forked while another thread held it hung
    at the child's first use (a DataLoader worker forked while a prefetch thread planned
    a shard: 4 forks in 70, s53A). Two threads may both compute a value the first time;
    the values lateseq caches are the same whoever computes them."""

    def __init__(self, func: Callable[[Any], T]) -> None:
        self.func = func
        self.__doc__ = func.__doc__
        self.name = func.__name__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.func(instance)  # found there from now on, before this
        return value
