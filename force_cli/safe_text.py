"""Printing text that came from a user or a file exactly as it is.

A checkpoint's metadata, a file name or a flag's value can hold rich markup (``[/]``,
``[link=...]``) or terminal escape sequences. Shown raw, the first crashes rich or turns into
styling and hyperlinks, the second drives the terminal. ``literal`` makes control characters
visible (``\\x1b``) and ``escape`` also neutralises markup, so the user sees the bytes they have.
"""

from __future__ import annotations

import reprlib
import unicodedata

from rich.markup import escape as _escape_markup
from rich.text import Text


def visible(text: object) -> str:
    """``text`` with every control or format character (ESC, CR, BEL, bidi overrides...) spelled out."""
    out = []
    for ch in str(text):
        if ch == "\n" or unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp"):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def one_line(text: object) -> str:
    """``visible`` and on one line: newlines spelled out too (for error messages)."""
    return visible(text).replace("\n", "\\n")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty:
    what a one-line error quotes of a library's failure."""
    message = str(exc)
    return message.splitlines()[0] if message else type(exc).__name__


def escape(text: object) -> str:
    """Safe to embed in a rich markup string: control characters visible, markup escaped."""
    return _escape_markup(visible(text))


def literal(text: object) -> Text:
    """A rich ``Text`` that is never parsed as markup (for table cells and titles)."""
    return Text(visible(text))


class _Brief(reprlib.Repr):
    """reprlib's bounded repr (a few items per level, a few levels), also for huge integers, whose
    full text Python refuses to make beyond 4300 digits (and which would be useless in a message)."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            return f"<an integer of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return super().repr_int(x, level)


_brief = _Brief()
_brief.maxlevel = 3  # at most 6 items per level: a few hundred items in all, whatever the nesting
_brief.maxstring = _brief.maxother = 60


def brief(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, in time and length bounded whatever the value (a YAML
    alias bomb, a list of millions, an integer of 5000 digits), on one line and control characters visible."""
    text = one_line(_brief.repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."
