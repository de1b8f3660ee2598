"""The protocol spec's methods and generic commands, and their parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import any_pb2, wrappers_pb2

from blockjoy.api.v1 import common_pb2, node_pb2
from nodevisor import (
    Catalogue,
    CatalogueError,
    InvalidArgument,
    InvalidCommand,
    NotSupported,
)
from nodevisor._config import BUILTIN_CATALOGUE
from nodevisor._protocol import unpack_generic

LITECOIN = "litecoin-regtest/0.21.2-1"


def interface():
    return Catalogue.load([BUILTIN_CATALOGUE]).resolve(LITECOIN, "docker").interface


def test_the_litecoin_spec_declares_height_sync_and_mine():
    spec = interface()
    assert spec.methods["height"].jsonrpc == "getblockcount"
    assert spec.methods["sync_status"].map == {"true": "Syncing", "false": "Synced"}
    mine = spec.command("litecoin-regtest", "mine")
    assert mine.substitute(mine.check("mine", {"n": 5})) == (5, "raw(51)#8lvh9jxk")


def test_an_undeclared_command_is_not_supported_and_named():
    with pytest.raises(NotSupported, match=r"no generic command 'rm'.*nothing was run"):
        interface().command("litecoin-regtest", "rm")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"n": "5; rm -rf /"}, "must be int, got '5; rm -rf /'"),
        ({"n": "$(reboot)"}, "must be int"),
        ({"n": 2.5}, "must be int"),
        ({"n": True}, "must be int, got True"),
        ({"n": 0}, "is 0; at least 1"),
        ({"n": 432}, "at most 431"),
        ({}, "needs parameter 'n'"),
        ({"n": 1, "descriptor": "x"}, "has no parameter 'descriptor'"),
    ],
)
def test_a_parameter_that_does_not_fit_is_refused(given, message):
    mine = interface().command("litecoin-regtest", "mine")
    with pytest.raises(InvalidArgument, match=message):
        mine.check("mine", given)


def test_an_int_parameter_takes_decimal_digits_as_text():
    mine = interface().command("litecoin-regtest", "mine")
    assert mine.check("mine", {"n": "12"}) == {"n": 12}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[methods.height]\njsonrpc = "x"\nexec = ["y"]\n', "exactly one of"),
        ('[methods.colour]\njsonrpc = "x"\n', "'colour' is not a method"),
        ('[methods.sync_status]\njsonrpc = "x"\nmap = { a = "Fine" }\n', "unknown"),
        ('[commands.c]\nexec = ["echo", "-n{n}"]\n', "not a whole placeholder"),
        ('[commands.c]\nexec = ["echo", "{n}"]\n', "not a whole placeholder"),
        (
            '[commands.c]\nexec = ["echo", "{n}\\n"]\n[commands.c.parameters.n]\n'
            'type = "int"\n',
            "not a whole placeholder",
        ),
        ('[commands.c]\njsonrpc = "x"\nrest = "/y"\n', "exactly one of"),
    ],
)
def test_a_bad_interface_in_a_spec_is_refused(tmp_path: Path, table, message):
    text = f'protocol = "bad"\n{table}[versions."1".runtimes.memory]\nimage = "i"\n'
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(CatalogueError, match=message):
        Catalogue.load([tmp_path])


def packed(value) -> any_pb2.Any:
    box = any_pb2.Any()
    box.Pack(value)
    return box


def generic(**params) -> node_pb2.NodeGenericCommand:
    return node_pb2.NodeGenericCommand(
        params=[common_pb2.Parameter(name=k, value=v) for k, v in params.items()]
    )


def test_generic_parameters_unpack_to_plain_values():
    msg = generic(
        command=packed(wrappers_pb2.StringValue(value="mine")),
        n=packed(wrappers_pb2.Int64Value(value=5)),
        fast=packed(wrappers_pb2.BoolValue(value=True)),
    )
    assert unpack_generic("node", msg) == ("mine", {"n": 5, "fast": True})


def test_a_generic_command_without_a_name_is_invalid():
    msg = generic(n=packed(wrappers_pb2.Int64Value(value=5)))
    with pytest.raises(InvalidCommand, match="names no command"):
        unpack_generic("node", msg)


def test_a_parameter_of_another_type_is_refused():
    msg = generic(
        command=packed(wrappers_pb2.StringValue(value="mine")),
        n=packed(common_pb2.Uuid(value="x")),
    )
    with pytest.raises(InvalidArgument, match=r"holds a blockjoy\.api\.v1\.Uuid"):
        unpack_generic("node", msg)
