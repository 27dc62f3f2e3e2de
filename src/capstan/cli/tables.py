"""The one table renderer of the CLI: aligned tables that never cut an id and never drop a column.

    table = TextTable("RUN ID", "NAME", "STATUS", ids=("RUN ID",), title="Runs")
    table.add_row(run_id, "rf-1", "FINISHED")
    table.print(console())

Layout rules, for a console ``width`` columns wide:

- Id columns (``ids=``) keep every value whole on one line: an id a user copies is never cut or folded.
- Other columns may wrap at spaces and fold long words, but never get narrower than their header, so every
  header stays readable.
- When even that does not fit, the rows are printed as blocks of ``HEADER  value`` lines, one block per row
  (what ``psql``'s expanded display does). Nothing is dropped; ``--json`` stays the machine-readable form.

`console` gives the terminal's width; output that is piped gets a natural width (no wrapping), unless
``COLUMNS`` is set, which is honoured either way.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

PIPE_WIDTH = 1000
"""Width of piped output without ``COLUMNS``: wide enough that rows are never wrapped."""

# SIMPLE_HEAD box without edges and padding (0, 1) without edge padding: between two columns sit one pad, the
# (blank) vertical rule and another pad.
GAP = 3
RECORD_GAP = 2
MIN_FOLD_WIDTH = 10
"""A wrapping column is not squeezed below this (or its header, or its natural width): narrower cells read worse
than one block per row."""


def console(*, stderr: bool = False) -> Console:
    """A Rich console for CLI output: the terminal's width, or `PIPE_WIDTH` when piped (``COLUMNS`` wins)."""
    from rich.console import Console

    out = Console(highlight=False, stderr=stderr)
    if not out.is_terminal and not os.environ.get("COLUMNS", "").strip().isdigit():
        out = Console(highlight=False, stderr=stderr, width=PIPE_WIDTH)
    return out


def _lines(text: str) -> list[str]:
    return text.splitlines() or [""]


def _longest_line(text: str) -> int:
    from rich.cells import cell_len

    return max(cell_len(line) for line in _lines(text))


class TextTable:
    """Rows of strings under headers, laid out to the console's width by the rules in the module docstring."""

    def __init__(self, *headers: str, ids: Collection[str] = (), right: Collection[str] = (),
                 title: str | None = None) -> None:
        unknown = (set(ids) | set(right)) - set(headers)
        if unknown:
            raise ValueError(f"not a header of this table: {', '.join(sorted(unknown))}")
        self.headers = tuple(headers)
        self.ids = tuple(h in ids for h in headers)
        self.right = tuple(h in right for h in headers)
        self.title = title
        self.rows: list[tuple[tuple[str, ...], str | None]] = []

    def add_row(self, *cells: str, style: str | None = None) -> None:
        """Append a row; ``cells`` line up with the headers (missing trailing cells are blank)."""
        if len(cells) > len(self.headers):
            raise ValueError(f"{len(cells)} cells for {len(self.headers)} columns")
        padded = tuple(str(c) for c in cells) + ("",) * (len(self.headers) - len(cells))
        self.rows.append((padded, style))

    def __len__(self) -> int:
        return len(self.rows)

    # -- layout -----------------------------------------------------------------------------------------
    def natural_widths(self) -> list[int]:
        """Each column's width with nothing wrapped."""
        return [max([_longest_line(h)] + [_longest_line(cells[i]) for cells, _ in self.rows])
                for i, h in enumerate(self.headers)]

    def floor_widths(self) -> list[int]:
        """The narrowest each column may get: an id column its longest value, any other its header (and at least
        `MIN_FOLD_WIDTH` when its values are that wide)."""
        natural = self.natural_widths()
        return [n if is_id else min(n, max(_longest_line(h), MIN_FOLD_WIDTH))
                for n, h, is_id in zip(natural, self.headers, self.ids, strict=True)]

    def column_widths(self, width: int) -> list[int] | None:
        """Column widths that fit ``width`` (``None`` when the floors alone do not fit)."""
        natural, widths = self.natural_widths(), self.floor_widths()
        room = width - GAP * (len(widths) - 1) - sum(widths)
        if room < 0:
            return None
        # Hand the spare room out evenly to the columns that still want it, smallest need first.
        wanting = sorted((n - w, i) for i, (n, w) in enumerate(zip(natural, widths, strict=True)) if n > w)
        for position, (need, index) in enumerate(wanting):
            share = room // (len(wanting) - position)
            grant = min(need, share)
            widths[index] += grant
            room -= grant
        return widths

    # -- rendering --------------------------------------------------------------------------------------
    def print(self, out: Console) -> None:
        """Print to ``out`` as a table when it fits the console's width, else as one block per row."""
        from rich.text import Text

        if self.title:  # printed at the console's width, not the table's, so an id in it is not folded
            out.print(Text(self.title, style="italic"))
        widths = self.column_widths(out.width)
        if widths is None:
            self._print_records(out)
        else:
            out.print(self._rich_table(widths))

    def _rich_table(self, widths: Sequence[int]) -> Table:
        from rich import box
        from rich.table import Table
        from rich.text import Text

        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for header, width, is_id, right in zip(self.headers, widths, self.ids, self.right, strict=True):
            table.add_column(Text(header), width=width, no_wrap=is_id, overflow="ignore" if is_id else "fold",
                             justify="right" if right else "left")
        for cells, style in self.rows:
            # Text, not str: a cell is data, never Rich markup ("[red]" in a run name stays as typed).
            table.add_row(*(Text(cell) for cell in cells), style=style)
        return table

    def _print_records(self, out: Console) -> None:
        from rich.table import Table
        from rich.text import Text

        key_width = max(_longest_line(h.replace("\n", " ")) for h in self.headers)
        longest_id = max((_longest_line(cells[i]) for cells, _ in self.rows
                          for i, is_id in enumerate(self.ids) if is_id), default=0)
        side_by_side = key_width + RECORD_GAP + longest_id <= out.width
        for number, (cells, style) in enumerate(self.rows):
            if number:
                out.print()
            if side_by_side:
                grid = Table.grid(padding=(0, RECORD_GAP, 0, 0))
                grid.add_column(no_wrap=True, style="bold", min_width=key_width)
                grid.add_column(overflow="fold")
                for header, cell in zip(self.headers, cells, strict=True):
                    grid.add_row(Text(header.replace("\n", " ")), Text(cell, style=style or ""))
                out.print(grid)
                continue
            # Too narrow for key and id side by side: each value under its key, ids never wrapped by Rich.
            for header, cell, is_id in zip(self.headers, cells, self.ids, strict=True):
                out.print(Text(header.replace("\n", " "), style="bold"))
                if is_id:
                    out.print(Text("  " + cell, style=style or ""), soft_wrap=True)
                else:
                    out.print(Text("  " + cell, style=style or ""), overflow="fold")


def render(table: TextTable, width: int) -> str:
    """``table`` as the text a ``width``-column terminal shows (for tests and previews)."""
    from io import StringIO

    from rich.console import Console

    buffer = StringIO()
    table.print(Console(file=buffer, width=width, highlight=False, color_system=None, legacy_windows=False))
    return buffer.getvalue()
