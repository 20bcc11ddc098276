"""Plain-text tables for the terminal: columns as wide as their widest cell, left- or right-aligned, a rule under
the header. Every table the commands print (summary, models, bench, eval, predict, prepare) goes through here."""

from __future__ import annotations

from collections.abc import Sequence


def table_lines(
    rows: Sequence[Sequence[object]],
    *,
    header: Sequence[str] | None = None,
    align: str = "",
    gap: str = "  ",
    indent: str = "",
    rule: str = "-",
) -> list[str]:
    """The lines of a table: the header, a rule of `rule` characters as long as the header line, then the rows.

    `align` has one letter per column, "l" or "r" (columns beyond it are left-aligned); cells are str()-ed.
    Trailing spaces are stripped. An empty `rule` leaves the rule out.
    """
    cells = [[str(c) for c in row] for row in ([header] if header else []) + list(rows)]
    if not cells:
        return []
    columns = max(len(row) for row in cells)
    widths = [max((len(row[i]) for row in cells if i < len(row)), default=0) for i in range(columns)]

    def line(row: list[str]) -> str:
        parts = [
            c.rjust(w) if i < len(align) and align[i] == "r" else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=False))
        ]
        return (indent + gap.join(parts)).rstrip()

    lines = [line(row) for row in cells]
    if header and rule:
        lines.insert(1, indent + rule * (len(lines[0]) - len(indent)))
    return lines


def format_table(rows: Sequence[Sequence[object]], **options) -> str:
    """table_lines joined with newlines."""
    return "\n".join(table_lines(rows, **options))
