from __future__ import annotations

from pathlib import Path

from nodevisor import Catalogue

CATALOGUE = Path(__file__).resolve().parents[3] / "core/src/nodevisor/catalogue"


def test_both_litecoin_versions_resolve_to_local_images() -> None:
    catalogue = Catalogue.load([CATALOGUE])

    versions = ["0.21.2-1", "0.21.2-2", "0.21.2-3"]
    assert catalogue.protocols()["litecoin-regtest"] == versions
    for version in versions:
        release = catalogue.resolve(f"litecoin-regtest/{version}", "docker")
        assert release.image == f"nodevisor/litecoin-regtest:{version}"
        assert release.data_path == "/data"
        assert "-datadir=/data" in release.command
        assert release.stop_signal == "SIGTERM"
        assert release.grace_period == 120
        assert release.options["build"].endswith("build-litecoin.sh")


def test_only_revision_3_runs_babel() -> None:
    catalogue = Catalogue.load([CATALOGUE])

    babel = {
        version: catalogue.resolve(f"litecoin-regtest/{version}", "docker").options.get(
            "babel"
        )
        for version in ("0.21.2-1", "0.21.2-2", "0.21.2-3")
    }
    assert babel == {"0.21.2-1": None, "0.21.2-2": None, "0.21.2-3": True}
