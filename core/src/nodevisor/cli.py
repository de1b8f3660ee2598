"""The ``nodevisor`` command line."""

from __future__ import annotations

import logging

import click

from . import __version__
from ._cli_agent import agent
from ._logging import configure
from .controlplane._cli import control_plane


@click.group()
@click.version_option(__version__, prog_name="nodevisor")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """nodevisor runs blockchain nodes on this host for a control plane."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    configure(level)


main.add_command(agent)
main.add_command(control_plane)
