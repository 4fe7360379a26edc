"""Benchmarks: scripts that print figures, never timed tests.

``python -m jobsctl.bench`` (``make bench``) runs every section, prints one table and writes it
to ``bench/results.md``. Figures that are compared are measured side by side in the same run
and reported as ratios, since machines are noisy. ``--only NAME`` runs one section.
"""
