"""A failed conformance check shows the values it compared, and catches what
it is there to catch."""

from __future__ import annotations

import textwrap

pytest_plugins = ["pytester"]

_SUITE = """
import pytest
from nodevisor.conformance import ConformanceSuite, Harness
from nodevisor.testing import MemoryRuntime
from nodevisor.testing._memory import _as_runtime_node

IMAGES = ("testchain:1", "testchain:2")

{runtime}

class TestBroken(ConformanceSuite):
    @pytest.fixture
    def harness(self, tmp_path):
        return Harness(
            runtime_class=Broken,
            data_dir=tmp_path / "runtime",
            settings={{"known_images": IMAGES}},
            images=IMAGES,
            node={{"command": ["testchaind"], "grace_period": 0.3}},
        )
"""


def _kit_on(pytester, runtime: str, check: str):
    """Run the kit's check ``check`` on the memory runtime changed as
    ``runtime`` (the source of a class ``Broken``) says."""
    source = _SUITE.format(runtime=textwrap.dedent(runtime))
    pytester.makepyfile(test_broken=source)
    return pytester.runpytest_subprocess(
        "-p", "anyio", "-k", check, "-p", "no:cacheprovider"
    )


def test_a_failed_check_shows_what_it_compared(pytester):
    """A runtime whose delete does nothing: the check that expects the node
    gone fails with the node it still found, not a bare AssertionError."""
    keeps_its_nodes = """
        class Broken(MemoryRuntime):
            name = "memory"

            async def delete(self, node_id):
                return None
    """
    result = _kit_on(pytester, keeps_its_nodes, "test_delete_twice_succeeds")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert RuntimeNode(id=*is None*"])


def test_a_runtime_that_lists_other_hosts_nodes_fails_the_kit(pytester):
    """list_nodes() that shows every host's nodes once its own host has
    one: an empty host looks right, so the kit also looks with a node on
    each host."""
    lists_every_host = """
        class Broken(MemoryRuntime):
            name = "memory"

            async def list_nodes(self):
                every = [_as_runtime_node(n["id"], n) for n in self._load_all()]
                own = await super().list_nodes()
                return every if own else own
    """
    check = "test_list_nodes_shows_only_its_own_host"
    result = _kit_on(pytester, lists_every_host, check)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*list_nodes() of host * lists node * of host *"])
