"""Shared fixtures: the Unix port, a throwaway CA, and a real mosquitto with mutual TLS."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import upy
from jobsctl.broker import Broker, start_broker
from jobsctl.pki import CertificateAuthority, Credentials

# Each area keeps its fixtures in tests/plugin_<area>.py; all of them are loaded.
pytest_plugins = sorted(p.stem for p in Path(__file__).parent.glob("plugin_*.py"))
# Plugins import each other's helpers; rewrite their asserts whichever is imported first.
pytest.register_assert_rewrite(*pytest_plugins)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability-full",
        action="store_true",
        default=False,
        help="run the reliability suite with its full trial counts",
    )


@pytest.fixture(scope="session")
def micropython() -> Callable[..., upy.Result]:
    """``micropython(code, heapsize=..., cwd=..., timeout=...)`` runs device code."""
    if not upy.MICROPYTHON.exists():
        pytest.fail("build/micropython is missing: run `make setup`")
    return upy.run


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """A second CA that nothing trusts: its certificates must be refused everywhere."""
    return CertificateAuthority(tmp_path_factory.mktemp("other-ca"), name="someone else's CA")


@pytest.fixture(scope="session")
def thing_creds(
    ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Credentials]:
    """``thing_creds(name)``: a client certificate (CN = name) from the test CA, cached."""
    folder = tmp_path_factory.mktemp("things")
    cache: dict[str, Credentials] = {}

    def issue(name: str) -> Credentials:
        if name not in cache:
            cache[name] = ca.issue(name, folder / name)
        return cache[name]

    return issue


@pytest.fixture()
def broker(ca: CertificateAuthority, tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto on a free loopback port: mutual TLS, per-thing ACL; stopped after."""
    with start_broker(tmp_path / "broker", ca) as b:
        yield b
