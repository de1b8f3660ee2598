"""``python -m nodevisor``: the same as the ``nodevisor`` command."""

from .cli import main

main()
