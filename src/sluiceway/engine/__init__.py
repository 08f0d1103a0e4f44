"""The composition root: wires a config into generators, schedulers, admission and storage."""
