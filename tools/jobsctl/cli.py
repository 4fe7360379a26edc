"""``jobsctl``: a thin command line over the jobsctl library.

Subcommands live in the package :mod:`jobsctl.commands`: every module there has a
``register(subparsers)`` that adds its commands (each sets ``func`` to a callable taking the
parsed arguments and returning an exit code). New commands are new modules; this file does
not change. Every expected failure becomes one line ``jobsctl: <message>`` and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
)

from . import __version__, commands
from .errors import JobsctlError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobsctl", description="Local AWS IoT Jobs stack and tools for the ESP32 agent."
    )
    parser.add_argument("--version", action="version", version=f"jobsctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if callable(register):
            register(sub)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    args = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except JobsctlError as exc:
        message = str(exc)
    except ClientError as exc:
        err = exc.response.get("Error", {})
        message = f"{err.get('Code', 'error')}: {err.get('Message', exc)}"
    except NoCredentialsError:
        message = "no AWS credentials: configure a profile (aws configure) and give --profile"
        if args is not None and "state_dir" in vars(args):
            message += ", or give --state-dir for the local stack"
    except NoRegionError:
        message = "no AWS region: give --region or set AWS_REGION (or a region in the profile)"
    except EndpointConnectionError as exc:
        message = f"cannot reach {exc.kwargs.get('endpoint_url', 'the endpoint')}"
    except BotoCoreError as exc:
        message = str(exc)
    except KeyboardInterrupt:
        message = "interrupted"
    print(f"jobsctl: {_one_line(message)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
