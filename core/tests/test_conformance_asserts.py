"""A failed conformance check shows the values it compared."""

from __future__ import annotations

import textwrap

pytest_plugins = ["pytester"]


def test_a_failed_check_shows_what_it_compared(pytester):
    """A runtime whose delete does nothing: the check that expects the node
    gone fails with the node it still found, not a bare AssertionError."""
    pytester.makepyfile(
        test_broken=textwrap.dedent(
            """
            import pytest
            from nodevisor.conformance import ConformanceSuite, Harness
            from nodevisor.testing import MemoryRuntime

            IMAGES = ("testchain:1", "testchain:2")

            class KeepsItsNodes(MemoryRuntime):
                name = "memory"

                async def delete(self, node_id):
                    return None

            class TestKeepsItsNodes(ConformanceSuite):
                @pytest.fixture
                def harness(self, tmp_path):
                    return Harness(
                        runtime_class=KeepsItsNodes,
                        data_dir=tmp_path / "runtime",
                        settings={"known_images": IMAGES},
                        images=IMAGES,
                        node={"command": ["testchaind"], "grace_period": 0.3},
                    )
            """
        )
    )
    result = pytester.runpytest_subprocess(
        "-p", "anyio", "-k", "test_delete_twice_succeeds", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert RuntimeNode(id=*is None*"])


def test_a_runtime_that_lists_other_hosts_nodes_fails_the_kit(pytester):
    """list_nodes() that shows every host's nodes once its own host has
    one: an empty host looks right, so the kit also looks with a node on
    each host."""
    pytester.makepyfile(
        test_broken=textwrap.dedent(
            """
            import pytest
            from nodevisor.conformance import ConformanceSuite, Harness
            from nodevisor.testing import MemoryRuntime
            from nodevisor.testing._memory import _as_runtime_node

            IMAGES = ("testchain:1", "testchain:2")

            class ListsEveryHost(MemoryRuntime):
                name = "memory"

                async def list_nodes(self):
                    every = [_as_runtime_node(n["id"], n) for n in self._load_all()]
                    own = await super().list_nodes()
                    return every if own else own

            class TestListsEveryHost(ConformanceSuite):
                @pytest.fixture
                def harness(self, tmp_path):
                    return Harness(
                        runtime_class=ListsEveryHost,
                        data_dir=tmp_path / "runtime",
                        settings={"known_images": IMAGES},
                        images=IMAGES,
                        node={"command": ["testchaind"], "grace_period": 0.3},
                    )
            """
        )
    )
    result = pytester.runpytest_subprocess(
        "-p",
        "anyio",
        "-k",
        "test_list_nodes_shows_only_its_own_host",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*list_nodes() of host * lists node * of host *"])
