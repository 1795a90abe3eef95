"""One object per calling thread, and the set of every live thread's: the registry that
:mod:`.workspace` (scratch buffers) and :mod:`.prepared` (prepared weights) keep their
arrays in, so that their caps count every thread and their release frees them all."""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class PerThread(Generic[T]):
    """``factory()``'s object for each thread that asks (:meth:`mine`), kept as long as
    the thread lives. ``lock`` guards what the objects hold against other threads;
    iterate under it to see every live thread's object. After a fork the child keeps
    only the forking thread's object and gets a new lock (a lock another thread held
    at the fork would never be released there)."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self.lock = threading.Lock()
        #: ``.value``: this thread's object, once made (hot paths read it directly)
        self.local = threading.local()
        self._every: weakref.WeakSet = weakref.WeakSet()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork_in_child)

    def mine(self) -> T:
        """This thread's object, made on its first use."""
        mine = getattr(self.local, "value", None)
        if mine is None:
            mine = self.local.value = self._factory()
            with self.lock:
                self._every.add(mine)
        return mine

    def __iter__(self) -> Iterator[T]:
        """Every live thread's object (hold ``lock``)."""
        return iter(list(self._every))

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()
        mine = getattr(self.local, "value", None)
        self._every.clear()
        if mine is not None:
            self._every.add(mine)
