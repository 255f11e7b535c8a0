"""Run-time contexts and the context expressions that select repeatables.

A *context* (``dev``, ``prod``...) is chosen when rolekit runs; a repeatable
may carry an *expression* over context names, Liquibase style::

    dev or local        !prod and (eu, us)        not prod

Precedence is ``!``/``not`` > ``and`` > ``or`` > ``,``.  A comma is an ``or``;
as ``or`` is associative, giving it a lower level changes no result, so both
share one level here.  Unlike Liquibase, an expression never matches when no
context is given: forgetting ``--context`` must not run ``!prod`` code in
production.

Input comes from the command line and migration files, so limits are checked
*before* parsing and the parser recurses only for parentheses, which are
capped: hostile input fails fast with a :class:`ContextExpressionError`,
never a ``RecursionError``.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet
from typing import NamedTuple, NoReturn

from rolekit.errors import ContextExpressionError

MAX_EXPRESSION_LENGTH = 1000
MAX_NESTING_DEPTH = 50
# One rule for context names everywhere (expressions, -x context, rotation.json,
# secrets keys): no dot, since a secrets key ``role.password.context`` must
# split in one way only.
_NAME = re.compile(r"[A-Za-z0-9_\-]{1,63}")
_WORD = re.compile(r"[A-Za-z0-9_\-]+")
_SPACE = " \t\r\n"
_KEYWORDS = frozenset({"and", "or", "not"})
_SYMBOLS = {"!": "not", ",": "or", "(": "(", ")": ")"}
_BINARY = ("or", "and")  # loosest first; "," is tokenized as "or"


def _quote(text: str) -> str:
    """Return ``repr(text)`` cut to 80 characters, safe for a terminal or log."""
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def parse_contexts(value: str | None) -> frozenset[str]:
    """Parse the active contexts, e.g. ``"dev, local"`` -> ``{"dev", "local"}``.

    Names are lowered because contexts are case-insensitive.  ``and``, ``or``
    and ``not`` are refused: no expression could ever name them.
    """
    if value is None or not value.strip():
        return frozenset()
    if len(value) > MAX_EXPRESSION_LENGTH:
        # A list this long is a mistake, and it would be logged and stored in
        # the changelog history on every run.
        raise ContextExpressionError(
            f"context list of {len(value)} characters is longer than "
            f"{MAX_EXPRESSION_LENGTH}: {_quote(value)}"
        )
    return frozenset(check_context_name(item.strip(), within=value) for item in value.split(","))


def check_context_name(name: str, *, within: str | None = None) -> str:
    """Return *name* lowered if it is a valid context name, else raise.

    :raises ContextExpressionError: naming the problem, the name escaped.
    """
    where = f" in {_quote(within)}" if within is not None and within != name else ""
    if not _NAME.fullmatch(name):
        raise ContextExpressionError(
            f"invalid context name {_quote(name)}{where}: use 1-63 letters, digits, '_' or '-'"
        )
    if name.lower() in _KEYWORDS:
        raise ContextExpressionError(f"invalid context name {_quote(name)}: it is an operator")
    return name.lower()


def primary_context(value: str | None) -> str | None:
    """The first of the active contexts: it picks the passwords and login state."""
    if value is None or not parse_contexts(value):
        return None
    return value.split(",")[0].strip().lower()


class _Token(NamedTuple):
    kind: str  # "name", "and", "or", "not", "(", ")" or "end"
    value: str  # as written, for messages
    pos: int


class _Op(NamedTuple):
    kind: str  # "and", "or" or "not"
    args: tuple[_Node, ...]


_Node = str | _Op


def _fail(text: str, problem: str, pos: int) -> NoReturn:
    """Raise with an 80-character window of *text* and a caret under *pos*."""
    start = max(0, min(pos - 40, len(text) - 80))
    window = "".join(
        c if c.isprintable() else " " if c.isspace() else "?" for c in text[start : start + 80]
    )
    lead = "..." if start else ""
    tail = "..." if start + 80 < len(text) else ""
    caret = " " * (len(lead) + pos - start) + "^"
    raise ContextExpressionError(
        f"invalid context expression: {problem} at position {pos + 1}\n"
        f"  {lead}{window}{tail}\n  {caret}"
    )


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        if text[pos] in _SPACE:
            pos += 1
            continue
        word = _WORD.match(text, pos)
        if word:
            value = word.group()
            if len(value) > 63:
                _fail(text, "context name longer than 63 characters", pos)
            kind = value.lower() if value.lower() in _KEYWORDS else "name"
            tokens.append(_Token(kind, value, pos))
        elif text[pos] in _SYMBOLS:
            tokens.append(_Token(_SYMBOLS[text[pos]], text[pos], pos))
        else:
            _fail(text, f"unexpected character {_quote(text[pos])}", pos)
        pos += len(tokens[-1].value)
    tokens.append(_Token("end", "", len(text)))
    return tokens


class _Parser:
    """Recursive descent; it recurses only for ``(``, whose depth is capped."""

    def __init__(self, text: str) -> None:
        self.text, self.tokens, self.i, self.depth = text, _tokenize(text), 0, 0
        self.names: set[str] = set()

    def fail(self, problem: str, pos: int) -> NoReturn:
        _fail(self.text, problem, pos)

    def parse(self) -> _Node:
        if self.tokens[0].kind == "end":
            self.fail("context expression is empty", 0)
        node, tok = self._binary(), self.tokens[self.i]
        if tok.kind == ")":
            self.fail("unmatched ')'", tok.pos)
        if tok.kind != "end":
            self.fail(f"expected 'and', 'or' or ',' before {tok.value!r}", tok.pos)
        return node

    def _binary(self, level: int = 0) -> _Node:
        """Parse ``or`` (level 0) or ``and`` (level 1) chains into one n-ary node."""
        if level == len(_BINARY):
            return self._not()
        args = [self._binary(level + 1)]
        while self.tokens[self.i].kind == _BINARY[level]:
            self.i += 1
            args.append(self._binary(level + 1))
        return args[0] if len(args) == 1 else _Op(_BINARY[level], tuple(args))

    def _not(self) -> _Node:
        negate = False  # a loop, not recursion: "!!!!...dev" cannot overflow
        while self.tokens[self.i].kind == "not":
            self.i, negate = self.i + 1, not negate
        node = self._primary()
        return _Op("not", (node,)) if negate else node

    def _primary(self) -> _Node:
        tok = self.tokens[self.i]
        self.i += 1
        if tok.kind == "name":
            self.names.add(tok.value.lower())
            return tok.value.lower()
        if tok.kind == "(":
            self.depth += 1
            if self.depth > MAX_NESTING_DEPTH:
                self.fail(f"parentheses nested deeper than {MAX_NESTING_DEPTH}", tok.pos)
            node, close = self._binary(), self.tokens[self.i]
            if close.kind == "end":
                self.fail("'(' is never closed", tok.pos)
            if close.kind != ")":
                problem = f"expected 'and', 'or', ',' or ')' before {close.value!r}"
                self.fail(problem, close.pos)
            self.i, self.depth = self.i + 1, self.depth - 1
            return node
        after = f" after {self.tokens[self.i - 2].value!r}" if self.i >= 2 else ""
        found = "the expression ends" if tok.kind == "end" else f"found {tok.value!r}"
        self.fail(f"expected a context name or '('{after}, {found}", tok.pos)


def _evaluate(node: _Node, active: frozenset[str]) -> bool:
    if isinstance(node, str):
        return node in active
    if node.kind == "not":
        return not _evaluate(node.args[0], active)
    results = (_evaluate(arg, active) for arg in node.args)
    return all(results) if node.kind == "and" else any(results)


def _normalize(active: AbstractSet[str] | None) -> frozenset[str]:
    return frozenset(name.lower() for name in active) if active else frozenset()


class ContextExpression:
    """A parsed context expression; build it with :meth:`parse`."""

    __slots__ = ("_names", "_tree", "text")
    text: str  #: the expression as written

    def __init__(self, text: str) -> None:
        limit = MAX_EXPRESSION_LENGTH
        if len(text) > limit:  # checked before any tokenizing or parsing
            _fail(text, f"expression longer than {limit} characters", limit)
        parser = _Parser(text)
        self.text, self._tree, self._names = (
            text,
            parser.parse(),
            frozenset(parser.names),
        )

    @classmethod
    def parse(cls, text: str) -> ContextExpression:
        """Parse *text*, raising :class:`ContextExpressionError` if it is invalid."""
        return cls(text)

    def __repr__(self) -> str:
        return f"ContextExpression({self.text!r})"

    def matches(self, active: AbstractSet[str] | None) -> bool:
        """Whether *active* selects this; never when no context is given."""
        given = _normalize(active)
        return bool(given) and _evaluate(self._tree, given)

    def names(self) -> frozenset[str]:
        """The (lowered) context names mentioned, e.g. to warn about typos."""
        return self._names

    def explain(self, active: AbstractSet[str] | None) -> str:
        """Say why :meth:`matches` gives its answer, for the skipped list."""
        given, shown = _normalize(active), _quote(self.text)
        if not given:
            return f"no context given; {shown} needs one"
        if _evaluate(self._tree, given):
            return f"matches {shown}"
        listed = ", ".join(_quote(name) for name in sorted(given))
        if len(given) == 1:
            return f"context {listed} does not match {shown}"
        return f"contexts {listed} do not match {shown}"
