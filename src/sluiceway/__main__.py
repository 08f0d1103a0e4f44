"""``python -m sluiceway``: the ``sluiceway`` command line."""

from sluiceway.cli.app import main

main()
