"""Benchmarks of guestsync against real local components (not part of the pytest run).

``python -m bench`` runs them all at their default sizes, ``python -m bench <name> [flags]`` one of them;
``python -m bench <name> --help`` lists its flags. See bench/RESULTS.md for what was measured and how.
"""
