from pathlib import Path

import pytest

from nodevisor import Catalogue, CatalogueError, InvalidArgument, parse_url
from nodevisor._config import BUILTIN_CATALOGUE


def test_resolves_a_version_for_a_runtime(catalogue_dir):
    release = Catalogue.load([catalogue_dir]).resolve("testchain/2", "memory")
    assert (release.image, release.stop_signal, release.grace_period) == (
        "testchain:2",
        "SIGINT",
        0.2,
    )
    assert release.command == ("testchaind",)


def test_a_runtime_that_changes_its_spec_changes_no_later_one(catalogue_dir):
    catalogue = Catalogue.load([catalogue_dir])
    release = catalogue.resolve("testchain/2", "memory")
    spec = release.node_spec(node_id="a", name="a", host_id="h")
    spec.environment["CHANGED"] = "1"
    spec.options["changed"] = True

    again = catalogue.resolve("testchain/2", "memory")
    later = again.node_spec(node_id="b", name="b", host_id="h")
    assert "CHANGED" not in later.environment and "changed" not in later.options


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("testchain", "not of the form <protocol>/<version>"),
        ("", "not of the form"),
        ("../etc/passwd", "not of the form"),
        ("testchain/1\n", "not of the form"),
        ("nochain/1", "protocol 'nochain' is not in the catalogue"),
        ("testchain/9", "has no version '9'"),
    ],
)
def test_unknown_or_malformed_urls_are_named(catalogue_dir, url, message):
    with pytest.raises(InvalidArgument, match=message):
        Catalogue.load([catalogue_dir]).resolve(url, "memory")


def test_a_version_without_an_image_for_the_runtime_is_refused(catalogue_dir):
    with pytest.raises(InvalidArgument, match="no image for the 'docker' runtime"):
        Catalogue.load([catalogue_dir]).resolve("testchain/1", "docker")


def test_parse_url_splits_protocol_and_version():
    assert parse_url("litecoin-regtest/0.21.2-1") == ("litecoin-regtest", "0.21.2-1")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("protocol = 'x'\n[versions]\n", "declares protocol 'x'"),
        ("protocol = 'bad'\n[node]\nstop_signal = 'SIGNOPE'\n[versions]\n", "SIGNOPE"),
        ("protocol = 'bad'\nversions = 3\n", "not valid"),
        ("protocol = ", "cannot be read"),
        ("[versions]\n", r"not valid:\n  protocol: missing$"),
        (
            "protocol = 'bad'\nimages = 1\n[versions]\n",
            r"\n  images: not a key a protocol spec has$",
        ),
        (
            "protocol = 'bad'\n[versions.1]\nnode = {ports = ['x']}\n"
            "[versions.1.runtimes.memory]\nimage = 'x'\n",
            r"\n  versions\.1\.node\.ports\.0 = 'x': Input should be a valid integer",
        ),
    ],
)
def test_bad_spec_files_are_reported_with_their_path(tmp_path: Path, text, message):
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(CatalogueError, match=message):
        Catalogue.load([tmp_path])


def test_a_missing_catalogue_directory_is_named(tmp_path):
    with pytest.raises(CatalogueError, match="does not exist"):
        Catalogue.load([tmp_path / "nope"])


def test_validation_errors_name_no_internals(tmp_path: Path):
    (tmp_path / "bad.toml").write_text("protocol = 'bad'\nversions = 3\n")
    with pytest.raises(CatalogueError) as caught:
        Catalogue.load([tmp_path])
    assert "_ProtocolFile" not in str(caught.value)
    assert "pydantic.dev" not in str(caught.value)


def test_a_spec_that_is_not_utf8_is_named(tmp_path: Path):
    (tmp_path / "bad.toml").write_bytes(b"protocol = 'bad\xff\xfe'\n")
    with pytest.raises(
        CatalogueError,
        match=r"bad\.toml' cannot be read: it is not UTF-8 text "
        r"\(byte 0xff at offset 15\)",
    ):
        Catalogue.load([tmp_path])


def test_a_catalogue_path_that_is_a_file_is_named(tmp_path: Path):
    (tmp_path / "spec.toml").write_text("protocol = 'spec'\n[versions]\n")
    with pytest.raises(CatalogueError, match=r"spec\.toml' is not a directory"):
        Catalogue.load([tmp_path / "spec.toml"])


def test_the_builtin_catalogue_loads():
    protocols = Catalogue.load([BUILTIN_CATALOGUE]).protocols()
    assert protocols["litecoin-regtest"] == ["0.21.2-1", "0.21.2-2", "0.21.2-3"]
