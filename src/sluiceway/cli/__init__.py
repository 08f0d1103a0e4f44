"""The ``sluiceway`` command line."""
