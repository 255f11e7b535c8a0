"""Reading and editing dotenv content, strictly.

python-dotenv parses; rolekit refuses what it would half-read (binary junk,
over-long lines, malformed lines, duplicate keys) and edits one key while
keeping every other byte.  Values are taken literally: unlike
``dotenv_values`` nothing expands ``${VAR}``, since a password may hold ``$``.
Messages name the file, key, line and context -- never a value, and never a
line's content (a password pasted alone on a line would be its "key").
"""

from __future__ import annotations

import codecs
import io
import re
from pathlib import Path
from typing import Final, NamedTuple

from dotenv.parser import parse_stream

from rolekit.errors import SecretsError
from rolekit.secrets._keys import context_of

#: a line longer than this is refused: no password needs it, junk does
MAX_LINE_BYTES: Final = 64 * 1024
#: a (decrypted) file larger than this is refused before it is read
MAX_FILE_BYTES: Final = 1024 * 1024

# bytes no text file holds: C0 controls but tab, LF and CR, and DEL
_BINARY_RE: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# a value that needs no quoting in dotenv
_PLAIN_VALUE_RE: Final = re.compile(r"[A-Za-z0-9_\-.~+/:@%,=]+")
_NEWLINE_RE: Final = re.compile(r"\r\n|\n|\r")
_LEADING_SPACE_RE: Final = re.compile(r"\s*")
_EOL_RE: Final = re.compile(r"(?:\r\n|\n|\r)\Z")


class Parsed(NamedTuple):
    """What a valid secrets file holds."""

    #: key -> non-empty value
    values: dict[str, str]
    #: key -> line number, for keys whose value is empty
    empty: dict[str, int]
    #: whether the file started with a UTF-8 BOM (kept when rewriting)
    bom: bool


def where(key: str, context: str | None) -> str:
    """Describe a key and its context for an error message."""
    if context is None:
        return f"key {key!r}"
    return f"key {key!r} (context {context!r})"


class Errors:
    """Builds error messages about one file, for one lookup or a whole load.

    Every message names the file, and -- when the error happens while
    looking up a password -- the key and context being looked up, so that a
    broken line elsewhere in the file is not mistaken for a missing password.
    """

    def __init__(self, path: Path, lookup: tuple[str, str] | None) -> None:
        self.path = path
        self.lookup = lookup

    def __call__(self, problem: str, *, line: int | None = None) -> SecretsError:
        at = f"{self.path}:{line}" if line is not None else str(self.path)
        message = f"secrets file {at}: {problem}"
        if self.lookup is not None:
            key, context = self.lookup
            message += f" (while looking up key {key!r} for context {context!r})"
        return SecretsError(message)


def _line_of(data: bytes, offset: int) -> int:
    """Return the 1-based line number of byte ``offset`` in ``data``."""
    return data.count(b"\n", 0, offset) + 1


def check_bytes(data: bytes, err: Errors) -> tuple[str, bool]:
    """Refuse binary junk and over-long lines; return the text and BOM flag.

    Done on bytes before python-dotenv sees anything, so that its parser
    never has to cope with a 1 MiB line or a NUL byte, and so that errors
    can give a line number.
    """
    bom = data.startswith(codecs.BOM_UTF8)
    if bom:
        data = data[len(codecs.BOM_UTF8) :]
    start = 0
    line = 1
    while start <= len(data):
        end = data.find(b"\n", start)
        if end < 0:
            end = len(data)
        if end - start > MAX_LINE_BYTES:
            raise err(
                f"line longer than {MAX_LINE_BYTES // 1024} KiB; this is not a "
                "secrets file (or it is corrupt)",
                line=line,
            )
        start = end + 1
        line += 1
    junk = _BINARY_RE.search(data)
    if junk is not None:
        what = "a NUL byte" if junk.group() == b"\0" else "a control character"
        raise err(
            f"{what}: this looks like binary data, not a dotenv file",
            line=_line_of(data, junk.start()),
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # ``from None``: the UnicodeDecodeError carries the raw bytes.
        raise err(
            "invalid UTF-8: this looks like binary data, not a dotenv file "
            "(an age file must have a name ending in '.age')",
            line=_line_of(data, exc.start),
        ) from None
    return text, bom


def _first_line(original: str, line: int) -> int:
    """Return the line a binding's key is on.

    python-dotenv numbers a binding from where its reader stopped, which is
    before any blank lines that precede it.
    """
    lead = _LEADING_SPACE_RE.match(original)
    assert lead is not None  # \s* always matches
    return line + len(_NEWLINE_RE.findall(lead.group()))


def has_line_break_or_control(value: str) -> bool:
    """Whether *value* holds CR, LF, NUL or another control character but tab.

    The one rule for what a password may not hold, when it is stored and when
    it is read: a line break splits a pgpass line in two (every login through
    it then fails), and libpq stops at a NUL.
    """
    return "\n" in value or "\r" in value or _BINARY_RE.search(value.encode("utf-8")) is not None


def parse(text: str, bom: bool, err: Errors) -> Parsed:
    """Parse dotenv ``text``; refuse malformed lines, duplicate keys, and values
    holding a line break or control character once decoded."""
    values: dict[str, str] = {}
    empty: dict[str, int] = {}
    seen: dict[str, int] = {}
    for binding in parse_stream(io.StringIO(text)):
        line = _first_line(binding.original.string, binding.original.line)
        if binding.error:
            # Never quote the line: it may be a password.
            raise err("malformed line that python-dotenv cannot parse", line=line)
        key = binding.key
        if key is None:  # blank line or comment
            continue
        if binding.value is None:
            # Not naming the "key": a password pasted alone on a line would
            # be parsed as a key without value.
            raise err("malformed line: no '=' after the key", line=line)
        if key in seen:
            raise err(
                f"duplicate {where(key, context_of(key))} on lines "
                f"{seen[key]} and {line}: it is ambiguous which password is "
                "meant; keep one",
                line=line,
            )
        seen[key] = line
        if has_line_break_or_control(binding.value):
            # After python-dotenv's decoding: "\n" in double quotes, or a quoted
            # value over several lines.  Never the value itself.
            raise err(
                f"the value of {where(key, context_of(key))} holds a line break or a control "
                "character (python-dotenv decodes \\n in double quotes): a pgpass line would "
                "split in two, and libpq stops at a NUL; remove it, or single-quote the value "
                "for a literal backslash",
                line=line,
            )
        if binding.value == "":
            empty[key] = line
        else:
            values[key] = binding.value
    return Parsed(values=values, empty=empty, bom=bom)


def format_value(value: str) -> str:
    """Quote ``value`` so that python-dotenv parses it back unchanged.

    Plain passwords (as :func:`generate_password` makes) are written bare;
    anything else in single quotes, where python-dotenv only decodes ``\\\\``
    and ``\\'`` and does no ``${VAR}`` expansion.
    """
    if _PLAIN_VALUE_RE.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def edit(text: str, key: str, value: str) -> str:
    """Return ``text`` with ``key`` set to ``value``, all else unchanged.

    The key's line is replaced (with its line ending; an inline comment on
    that line is dropped) or, if absent, appended with the file's line
    ending.  Comments, blank lines and other keys are kept byte for byte.
    """
    new_line = f"{key}={format_value(value)}"
    bindings = list(parse_stream(io.StringIO(text)))
    if "".join(b.original.string for b in bindings) != text:
        # python-dotenv consumes all input; if that ever changes, refuse to
        # rewrite rather than lose lines.
        raise SecretsError(
            "cannot rewrite the secrets file: python-dotenv did not account for all of its content"
        )
    parts: list[str] = []
    found = False
    for binding in bindings:
        original = binding.original.string
        if binding.key == key and not binding.error:
            lead = _LEADING_SPACE_RE.match(original)
            assert lead is not None
            blank = lead.group()
            cut = max(blank.rfind("\n"), blank.rfind("\r")) + 1
            eol = _EOL_RE.search(original)
            parts.append(original[:cut] + new_line + (eol.group() if eol else ""))
            found = True
        else:
            parts.append(original)
    result = "".join(parts)
    if not found:
        newline = "\r\n" if "\r\n" in text else "\n"
        if result and not result.endswith(("\n", "\r")):
            result += newline
        result += new_line + newline
    return result


def check_value(value: str, key: str, context: str) -> None:
    """Refuse a value that :meth:`SecretsFile.load` would refuse to read back."""
    what = where(key, context)
    if not isinstance(value, str):
        raise TypeError(f"the password for {what} must be a str")
    if not value:
        raise SecretsError(f"refusing to store an empty password for {what}")
    if has_line_break_or_control(value):
        raise SecretsError(
            f"refusing to store the password for {what}: it holds a line break "
            "or a control character"
        )
    if len(new_line := f"{key}={format_value(value)}".encode()) > MAX_LINE_BYTES:
        raise SecretsError(
            f"refusing to store the password for {what}: its line would be "
            f"{len(new_line)} bytes, over the {MAX_LINE_BYTES // 1024} KiB limit"
        )
