"""The Docker SDK, loaded when first used.

The agent imports every installed plugin at start-up to learn which runtimes
it offers, whichever runtime it then runs; docker-py (with requests and
urllib3) takes a good share of a second to import on a small host. The
plugin's modules take ``docker`` and ``requests`` from here: they are real
modules whose import runs on the first attribute access, so an agent that
never makes a Docker runtime never pays for them.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

__all__ = ["docker", "requests"]


def _lazy(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


docker = _lazy("docker")
requests = _lazy("requests")
