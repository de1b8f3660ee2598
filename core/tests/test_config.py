import os
import re
import stat
from pathlib import Path

import pytest

from nodevisor import ConfigError, CredentialsError
from nodevisor._config import load_config
from nodevisor._credentials import Credentials


def test_file_values_and_environment_overrides(tmp_path, monkeypatch):
    file = tmp_path / "config.toml"
    file.write_text(
        'api_url = "10.0.0.1:1"\nruntime = "memory"\n'
        '[runtimes.memory]\nfail = ["start"]\n'
    )
    monkeypatch.setenv("NODEVISOR_API_URL", "127.0.0.1:9")
    monkeypatch.setenv("NODEVISOR_DATA_DIR", str(tmp_path / "data"))
    config = load_config(file)
    assert config.api_url == "127.0.0.1:9"
    assert config.runtime == "memory"
    assert config.data_dir == tmp_path / "data"
    assert config.runtimes == {"memory": {"fail": ["start"]}}


def test_an_unknown_key_is_named(tmp_path):
    file = tmp_path / "config.toml"
    file.write_text('api_ulr = "x"\n')
    with pytest.raises(ConfigError, match="api_ulr"):
        load_config(file)


def test_a_named_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_broken_toml_is_reported_with_the_path(tmp_path):
    file = tmp_path / "config.toml"
    file.write_text("api_url = \n")
    with pytest.raises(ConfigError, match=str(file)):
        load_config(file)


def test_credentials_are_private_and_round_trip(tmp_path: Path):
    path = Credentials("h-1", "secret", "127.0.0.1:1").save(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Credentials.load(tmp_path).token == "secret"


def test_missing_credentials_say_to_provision(tmp_path):
    with pytest.raises(CredentialsError, match="run 'nodevisor agent provision"):
        Credentials.load(tmp_path)


def test_corrupt_credentials_are_named(tmp_path):
    (tmp_path / "credentials.json").write_text("{")
    with pytest.raises(CredentialsError, match="unreadable"):
        Credentials.load(tmp_path)


def test_runtime_settings_from_the_environment_merge_and_keep_their_types(
    tmp_path, monkeypatch
):
    file = tmp_path / "config.toml"
    file.write_text(
        "[runtimes.memory]\ndelay = { start = 1 }\n[runtimes.docker]\npull = true\n"
    )
    monkeypatch.setenv("NODEVISOR_RUNTIMES__MEMORY__FAIL", '["start"]')
    monkeypatch.setenv("NODEVISOR_RUNTIMES__DOCKER__TIMEOUT", "30")
    monkeypatch.setenv("NODEVISOR_RUNTIMES__DOCKER__BASE_URL", "unix:///run/d.sock")
    config = load_config(file)
    assert config.runtimes == {
        "memory": {"delay": {"start": 1}, "fail": ["start"]},
        "docker": {"pull": True, "timeout": 30, "base_url": "unix:///run/d.sock"},
    }


def test_a_bad_environment_value_is_a_config_error(tmp_path, monkeypatch):
    file = tmp_path / "config.toml"
    file.write_text("")
    monkeypatch.setenv("NODEVISOR_CATALOGUE", "/not/json")
    with pytest.raises(
        ConfigError, match=r"NODEVISOR_CATALOGUE = '/not/json': not JSON; a list"
    ):
        load_config(file)


def test_a_config_that_is_not_utf8_is_named(tmp_path):
    file = tmp_path / "config.toml"
    file.write_bytes(b"api_url = '\xff'\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(file)


def test_api_url_counts_as_set_only_when_given(tmp_path, monkeypatch):
    file = tmp_path / "config.toml"
    file.write_text("runtime = 'memory'\n")
    assert not load_config(file).api_url_set
    monkeypatch.setenv("NODEVISOR_API_URL", "127.0.0.1:9")
    assert load_config(file).api_url_set


def test_each_bad_value_is_one_line_naming_key_value_and_problem(tmp_path):
    file = tmp_path / "config.toml"
    file.write_text("heartbeat_interval = -1\nreconcile_attempts = 'many'\n")
    with pytest.raises(ConfigError) as raised:
        load_config(file)
    lines = str(raised.value).splitlines()
    assert lines[0] == f"config {str(file)!r} is not valid:"
    assert lines[1] == "  heartbeat_interval = -1: Input should be greater than 0"
    assert lines[2].startswith("  reconcile_attempts = 'many': ")
    assert len(lines) == 3  # no pydantic banner, no links


def test_an_unknown_key_lists_the_known_ones(tmp_path):
    file = tmp_path / "config.toml"
    file.write_text("api_ulr = '127.0.0.1:1'\n")
    with pytest.raises(ConfigError, match=r"api_ulr: not a known key \(known keys: "):
        load_config(file)


def test_a_bad_environment_value_is_named_as_its_variable(tmp_path, monkeypatch):
    file = tmp_path / "config.toml"
    file.write_text("")
    monkeypatch.setenv("NODEVISOR_HEARTBEAT_INTERVAL", "soon")
    with pytest.raises(ConfigError, match=r"NODEVISOR_HEARTBEAT_INTERVAL = 'soon': "):
        load_config(file)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:50051",
        "cp.example.com:443",
        "[::1]:50051",
        "dns:///cp.example.com:443",
        "unix:/run/nodevisor-cp.sock",
    ],
)
def test_api_url_takes_what_grpc_can_dial(tmp_path, address):
    file = tmp_path / "config.toml"
    file.write_text(f"api_url = {address!r}\n")
    assert load_config(file).api_url == address


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("http://127.0.0.1:50051", "is a URL; write the control plane's address"),
        ("not an address", "is not an address: expected host:port"),
        ("cp.example.com", "is not an address: expected host:port"),
        ("cp.example.com:70000", "has port 70000; a port is 1-65535"),
        ("dns:", "names no address after 'dns:'"),
        ("unix:", "names no address after 'unix:'"),
    ],
)
def test_api_url_refuses_what_grpc_cannot_dial(tmp_path, address, problem):
    file = tmp_path / "config.toml"
    file.write_text(f"api_url = {address!r}\n")
    with pytest.raises(ConfigError, match=f"api_url: {re.escape(repr(address))} "):
        load_config(file)
    with pytest.raises(ConfigError, match=re.escape(problem)):
        load_config(file)


def test_an_endless_interval_is_refused(tmp_path):
    file = tmp_path / "config.toml"
    file.write_text("protocol_interval = inf\n")
    with pytest.raises(ConfigError, match="protocol_interval = inf: "):
        load_config(file)


def test_a_misspelled_variable_is_refused_naming_the_key(tmp_path, monkeypatch):
    """A typo in a variable would leave the default silently in place."""
    file = tmp_path / "config.toml"
    file.write_text('runtime = "memory"\n')
    monkeypatch.setenv("NODEVISOR_RECONCILE_INTERVALS", "5")
    monkeypatch.setenv("NODEVISOR_DATADIR", "/tmp/x")
    with pytest.raises(ConfigError) as raised:
        load_config(file)
    assert str(raised.value).splitlines() == [
        "NODEVISOR_DATADIR is not a config variable; did you mean NODEVISOR_DATA_DIR?",
        "NODEVISOR_RECONCILE_INTERVALS is not a config variable; did you mean "
        "NODEVISOR_RECONCILE_INTERVAL?",
    ]


@pytest.mark.parametrize(
    "name",
    [
        "NODEVISOR_CONFIG",
        "NODEVISOR_CP_URL",
        "NODEVISOR_CP_DATA_DIR",
        "NODEVISOR_REQUIRE_DOCKER",
        "NODEVISOR_REQUIRE_LIBVIRT",
        "NODEVISOR_FAULT_SEED",
        "NODEVISOR_LIBVIRT_IMAGES",
        "NODEVISOR_BABEL_NODE",
        "NODEVISOR_SOMETHING_ELSE_ENTIRELY",
    ],
)
def test_other_nodevisor_variables_pass(tmp_path, monkeypatch, name):
    file = tmp_path / "config.toml"
    file.write_text('runtime = "memory"\n')
    monkeypatch.setenv(name, "1")
    if name == "NODEVISOR_CONFIG":
        monkeypatch.setenv(name, str(file))
    assert load_config(file).runtime == "memory"


def test_true_or_false_is_no_number(tmp_path):
    file = tmp_path / "config.toml"
    file.write_text("step_timeout = true\nreconcile_attempts = false\n")
    with pytest.raises(ConfigError) as raised:
        load_config(file)
    lines = str(raised.value).splitlines()
    assert lines[1:] == [
        "  step_timeout: true is not a number",
        "  reconcile_attempts: false is not a number",
    ]
