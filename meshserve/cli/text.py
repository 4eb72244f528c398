"""Showing what peers send as the text it is: control, bidi and other invisible characters escaped.

Model names, principals, request ids, status messages and reasons come from callers
and runtimes. Printed raw, a newline forges a table row or an ``audit tail`` line, and
U+202E (right-to-left override) makes ``iris\\u202egnp.exe`` show as ``irisexe.png``.
Every table cell and tail line goes through :func:`printable`; :class:`Table` does it
for every string cell, and never reads a cell as rich markup. ``--json`` output needs
none of this: JSON escapes by itself.
"""

from __future__ import annotations

import rich.table
from rich.console import RenderableType
from rich.style import StyleType
from rich.text import Text

# Shown by name; a backslash is doubled so that an escape and the same characters typed are told apart.
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(char: str) -> str:
    named = _NAMED.get(char)
    if named is not None:
        return named
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, *, prose: bool = False) -> str:
    """``text`` with every character that is not shown as itself escaped, Python style.

    Escaped: control characters (``\\n``, ``\\x1b``...), format characters (bidi
    overrides and isolates U+202A-U+202E and U+2066-U+2069, marks U+200E/U+200F,
    zero-width characters), line and paragraph separators, spaces other than U+0020,
    private-use, unassigned and surrogate code points (what :meth:`str.isprintable`
    calls not printable), and the backslash itself, so that an escape and the same
    characters typed are told apart. A table cell or a tail line is always one line of
    such text. With ``prose`` (an error message, which quotes names already escaped),
    newlines and backslashes are kept.
    """
    if text.isprintable() and "\\" not in text:
        return text
    if prose:
        return "".join(c if c in "\n\\" else _escape(c) for c in text)
    return "".join(map(_escape, text))


def plain(text: str, *, style: StyleType = "") -> Text:
    """``text`` as a rich Text, escaped by :func:`printable` and never read as markup."""
    return Text(printable(text), style=style)


class Table(rich.table.Table):
    """A rich table whose string cells are shown as they are: escaped (:func:`printable`), never markup.

    Cells given as rich renderables (styled numbers...) are the CLI's own and pass unchanged.
    """

    def add_row(self, *renderables: RenderableType | None, style: StyleType | None = None,
                end_section: bool = False) -> None:
        super().add_row(*(plain(cell) if isinstance(cell, str) else cell for cell in renderables),
                        style=style, end_section=end_section)
