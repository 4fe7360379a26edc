"""The one error type of the host tools."""


class JobsctlError(Exception):
    """An expected failure: the command line prints ``jobsctl: <message>`` and exits 1."""
