"""The table ``make bench`` writes to ``bench/results.md``: one row per figure, the figure it
replaced beside it, and the command that made it."""

from __future__ import annotations

from pathlib import Path

Row = tuple[str, str, str]  # what, figure, compared with / note


# The command that makes each row (by the start of its first column); `make bench` runs all.
COMMANDS: dict[str, str] = {}


def command(row_start: str, cmd: str) -> None:
    COMMANDS[row_start] = cmd


# Rows renamed since an older results.md: new name -> old name (for the "before" column).
RENAMED = {
    "service: 1000 devices, burst, start-next + 2 updates each (MQTT, mTLS)": (
        "service: 1000 devices, start-next + 2 updates each (MQTT, mTLS)"
    ),
}


def previous_figures(path: Path) -> dict[str, str]:
    """measured -> figure of the results.md this run replaces (empty when there is none)."""
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.replace("\\|", "\x00").split("|")[1:-1]]
        if len(cells) >= 3 and cells[0] not in ("measured", "---"):
            out[cells[0].replace("\x00", "\\|")] = cells[1].replace("\x00", "\\|")
    return out


def table(rows: list[Row], before: dict[str, str] | None = None) -> str:
    lines = [
        "| measured | figure | before (the results.md this run replaced) "
        "| compared with / note | command |",
        "|---|---|---|---|---|",
    ]
    for a, b, c in rows:
        old = (before or {}).get(a) or (before or {}).get(RENAMED.get(a, ""), "—")
        cmd = next((v for k, v in COMMANDS.items() if a.startswith(k)), "`make bench`")
        lines.append(f"| {a} | {b} | {old} | {c} | {cmd} |")
    return "\n".join(lines)
