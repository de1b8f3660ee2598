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
