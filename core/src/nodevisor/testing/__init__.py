"""Test doubles that nodevisor ships for its own tests and for plugin authors.

``MemoryRuntime`` is the reference runtime: it keeps each node in a small
JSON file instead of an engine, can be told to fail chosen operations or to take
chosen time, and counts every operation it carries out. It is registered
through the ``nodevisor`` entry-point group as ``memory``, like any runtime.
"""

from __future__ import annotations

from ._memory import MemoryRuntime, nodevisor_runtimes

__all__ = ["MemoryRuntime", "nodevisor_runtimes"]
