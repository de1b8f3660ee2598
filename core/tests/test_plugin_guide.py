"""docs/plugins.md documents every hook and every Runtime method.

Adding a hook to ``nodevisor._hookspecs`` or a method to ``nodevisor.Runtime``
without describing it in the plugin author's guide fails here.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from nodevisor import Runtime, _hookspecs

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
MARKER = re.compile(r"<!-- file: (?P<path>\S+) -->\n```[a-z]*\n(?P<body>.*?)```", re.S)


def guide() -> str:
    return GUIDE.read_text()


def section(heading: str) -> str:
    """The text under the ``### heading`` line, up to the next heading."""
    text = guide()
    start = text.find(f"### {heading}")
    assert start >= 0, f"docs/plugins.md has no '### {heading}' heading"
    end = text.find("\n#", start + 1)
    return text[start : end if end >= 0 else len(text)]


@pytest.mark.parametrize("hook", _hookspecs.HOOKS)
def test_every_hook_is_documented_with_its_parameters(hook):
    parameters = list(inspect.signature(getattr(_hookspecs, hook)).parameters)
    text = section(f"`{hook}({', '.join(parameters)})`")
    for parameter in parameters:
        assert f"`{parameter}`" in text, f"{hook}: parameter {parameter!r} missing"
    for part in ("**When:**", "**Returns:**", "**Sync or async:**"):
        assert part in text, f"{hook}: no {part} paragraph"


def public_methods() -> list[str]:
    return [
        name
        for name, member in inspect.getmembers(Runtime, inspect.isfunction)
        if not name.startswith("_")
    ]


@pytest.mark.parametrize("method", public_methods())
def test_every_runtime_method_is_documented(method):
    parameters = list(inspect.signature(getattr(Runtime, method)).parameters)
    text = section(f"`{method}({', '.join(parameters)})")
    assert "Called" in text, f"Runtime.{method}: the guide does not say when"


def test_the_example_files_are_marked():
    paths = [match["path"] for match in MARKER.finditer(guide())]
    assert "pyproject.toml" in paths
    assert "tests/test_conformance.py" in paths
    assert len(paths) == len(set(paths)), f"a file is marked twice: {paths}"
