"""Finding the plugin stays cheap: the Docker SDK loads when first used.

The agent imports every installed plugin at start-up, whichever runtime it
runs; docker-py, requests and urllib3 take a good share of a second to
import on a small host.
"""

import subprocess
import sys

PROBE = """
import sys
from nodevisor._plugins import PluginManager
plugins = PluginManager()
plugins.load_entry_points()
assert "docker" in plugins.runtimes, plugins.runtimes
heavy = ("urllib3", "requests.adapters", "docker.api")
print(sorted(m for m in heavy if m in sys.modules))
"""


def test_discovering_the_runtime_does_not_import_the_sdk():
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_sdk_loads_on_first_use():
    probe = PROBE + "from nodevisor_docker._sdk import docker\ndocker.errors.NotFound\n"
    probe += "print(sorted(m for m in ('urllib3', 'docker.api') if m in sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert done.stdout.split("\n")[1] == "['docker.api', 'urllib3']", done.stdout
