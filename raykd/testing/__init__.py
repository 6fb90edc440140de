"""Testing aids, not used by any run: :mod:`raykd.testing.cluster` starts a real two-node Ray cluster
on one machine (for the cluster tests, ``benchmarks/scaling.py`` and trying ``raykd submit`` locally)."""
