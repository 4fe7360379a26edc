"""One row of the results table, and its rendering."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    section: str
    figure: str
    value: str
    note: str = ""


def markdown(rows: list[Row], header: str) -> str:
    out = [header, "", "| section | figure | value | note |", "|---|---|---|---|"]
    out += [f"| {r.section} | {r.figure} | {r.value} | {r.note} |" for r in rows]
    return "\n".join(out) + "\n"
