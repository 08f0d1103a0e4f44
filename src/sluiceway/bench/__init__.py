"""The benchmark harness of SPEC §10: named scenarios against the simulated provider or the
loopback mock server, warmup and measured iterations, leak checks, result files, and paired
comparisons of two git refs. ``sluiceway bench`` is its command line."""
