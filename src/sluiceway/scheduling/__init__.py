"""Task scheduling: readiness, the fair ready queue, task admission and the dispatch loop."""
