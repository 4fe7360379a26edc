"""The host layer rules of tools/jobsctl, checked by ``make check`` (HACKING.md, "Host layers").

    python tests/harness/layers.py [--root CHECKOUT]

Layers, lowest first; a module imports only from its own layer or a lower one:

    base      errors checkout statedir netutil boardmodel pki       (and the package itself)
    parts     broker objectstore image delta otajob flash deploy provision device devcheck
    service   service.*                              (the local AWS IoT Jobs service)
    assembly  stack things                           (the running stack, registering things)
    demo      demo
    commands  commands.*                             (the subcommands)
    cli       cli                                    (the top: nothing imports it)

Beside the order: the package imports no test or bench tool (tests, harness, upy, plugin_*,
bench, pytest, hypothesis) and no device code (iotjobs); only jobsctl.checkout computes paths
from ``__file__``; only jobsctl.statedir names the entries of a state directory.
Prints one line per breach and exits 1, or prints a summary and exits 0.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

from jobsctl.checkout import ROOT

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("", "errors", "checkout", "statedir", "netutil", "boardmodel", "pki")),
    (
        "parts",
        (
            *("broker", "objectstore", "image", "delta", "otajob", "flash", "deploy"),
            *("provision", "device", "devcheck"),
        ),
    ),
    ("service", ("service",)),
    ("assembly", ("stack", "things")),
    ("demo", ("demo",)),
    ("commands", ("commands",)),
    ("cli", ("cli",)),
)
# Never imported by the package: test and bench tools, the device code.
FORBIDDEN = {"tests", "harness", "upy", "bench", "pytest", "hypothesis", "iotjobs"}
FORBIDDEN_PREFIXES = ("plugin_", "test_")
# The state directory's entries: named only by jobsctl.statedir.
STATE_FILES = {"endpoints.json", "jobs.sqlite3", ".stack.lock"}
STATE_FOLDERS = {"things", "devices", "ca", "broker", "s3", "service", "signing"}
_NOT_IN_PACKAGE = "no test, bench or device code in the package"
_CHECKOUT = "paths into the checkout come from jobsctl.checkout"
_STATEDIR = "the state dir's layout belongs to jobsctl.statedir"


def layer_of(module: str) -> int:
    """The layer of ``module`` (a name inside the package: "", "stack", "service.model")."""
    top = module.split(".")[0]
    for rank, (_, members) in enumerate(LAYERS):
        if top in members:
            return rank
    raise KeyError(module)


def _module(path: Path, package: Path) -> str:
    rel = path.relative_to(package).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _imports(tree: ast.Module, module: str, is_package: bool) -> list[tuple[int, str, bool]]:
    """(line, target, inside): targets inside the package as names relative to it."""
    here = module.split(".") if module else []
    if not is_package:
        here = here[:-1]
    found: list[tuple[int, str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                inside = name == "jobsctl" or name.startswith("jobsctl.")
                found.append((node.lineno, name.removeprefix("jobsctl").lstrip("."), inside))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = ".".join([*base, *([node.module] if node.module else [])])
                if node.module is None:  # from . import a, b: the modules a and b
                    for alias in node.names:
                        found.append(
                            (node.lineno, ".".join(filter(None, [target, alias.name])), True)
                        )
                else:
                    found.append((node.lineno, target, True))
            elif node.module:
                inside = node.module == "jobsctl" or node.module.startswith("jobsctl.")
                found.append((node.lineno, node.module.removeprefix("jobsctl").lstrip("."), inside))
    return found


def check(root: Path) -> tuple[list[str], int]:
    """The breaches in the checkout at ``root``, and how many modules were checked."""
    package = root / "tools" / "jobsctl"
    problems: list[str] = []
    files = sorted(package.rglob("*.py"))
    for path in files:
        module = _module(path, package)
        where = path.relative_to(root)
        tree = ast.parse(path.read_text(), str(where))
        try:
            own = layer_of(module)
        except KeyError:
            problems.append(
                f"{where}: module jobsctl.{module} has no layer (tests/harness/layers.py)"
            )
            continue
        for line, target, inside in _imports(tree, module, path.name == "__init__.py"):
            if not inside:
                top = target.split(".")[0]
                if top in FORBIDDEN or top.startswith(FORBIDDEN_PREFIXES):
                    problems.append(f"{where}:{line}: imports {target}: {_NOT_IN_PACKAGE}")
                continue
            try:
                theirs = layer_of(target)
            except KeyError:
                continue  # a name inside a module (from . import helper): its module is checked
            if theirs > own:
                problems.append(
                    f"{where}:{line}: jobsctl.{module or '__init__'} ({LAYERS[own][0]}) imports "
                    f"jobsctl.{target} ({LAYERS[theirs][0]}), a higher layer"
                )
        if module != "checkout":
            for node in ast.walk(tree):
                if isinstance(node, ast.Name) and node.id == "__file__":
                    problems.append(f"{where}:{node.lineno}: __file__: {_CHECKOUT}")
        if module != "statedir":
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and node.value in STATE_FILES:
                    problems.append(f"{where}:{node.lineno}: {node.value!r}: {_STATEDIR}")
                elif (
                    isinstance(node, ast.BinOp)
                    and isinstance(node.op, ast.Div)
                    and isinstance(node.right, ast.Constant)
                    and node.right.value in STATE_FOLDERS
                    and "state" in ast.unparse(node.left)
                ):
                    problems.append(f"{where}:{node.lineno}: {ast.unparse(node)}: {_STATEDIR}")
    return problems, len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="layers.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this one)")
    args = parser.parse_args(argv)
    problems, checked = check(args.root)
    for line in problems:
        print(f"layers: {line}")
    print(f"layers: {checked} host modules {'ok' if not problems else 'FAILED'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
