"""What the tests (and the benchmarks) drive the product with; never imported by tools/jobsctl.

- :mod:`harness.rawrepl`: a simulated board on a pty that speaks the raw REPL, for mpremote;
- :mod:`harness.faultproxy`: a TCP proxy that cuts, stalls or counts a connection's bytes;
- :mod:`harness.layers`: the host layer rules ``make check`` enforces.
"""
