"""Host tools for the ESP32 AWS IoT Jobs agent.

The package is a scriptable library; ``jobsctl.cli`` is a thin command line over it.
Every expected failure is raised as :class:`jobsctl.errors.JobsctlError`, which the
command line prints as one line.
"""

__version__ = "0.1.0"
