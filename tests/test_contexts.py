"""Tests for :mod:`rolekit.model.contexts`: parsing, evaluation, errors and limits."""

from __future__ import annotations

import time

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rolekit.errors import ContextExpressionError, RolekitError
from rolekit.model.contexts import (
    MAX_EXPRESSION_LENGTH,
    ContextExpression,
    parse_contexts,
)

# --- parse_contexts ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, set()),
        ("", set()),
        ("   ", set()),
        ("dev", {"dev"}),
        ("dev, local", {"dev", "local"}),
        ("DEV,Local", {"dev", "local"}),
        ("dev,dev", {"dev"}),
        ("eu-west-1,us_2", {"eu-west-1", "us_2"}),
        ("x" * 63, {"x" * 63}),
    ],
)
def test_parse_contexts(value: str | None, expected: set[str]) -> None:
    assert parse_contexts(value) == frozenset(expected)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("dev local", "'dev local'"),
        ("dev,,prod", "''"),
        ("dev,", "''"),
        ("pr\u00f6d", "'pr\u00f6d'"),
        ("\u212a", "'\u212a'"),  # Kelvin sign lowers to ASCII "k": still refused
        ("x" * 64, "'" + "x" * 64 + "'"),
        ("dev\x1b[31m", "'dev\\x1b[31m'"),
        ("and", "'and'"),
        ("Not", "'Not'"),
        # one rule everywhere: a secrets key role.password.context splits one way only
        ("eu.prod", "'eu.prod'"),
    ],
)
def test_parse_contexts_rejects_bad_names(value: str, shown: str) -> None:
    with pytest.raises(ContextExpressionError) as info:
        parse_contexts(value)
    assert f"invalid context name {shown}" in str(info.value)
    assert "\x1b" not in str(info.value)


def test_a_dotted_context_is_refused_the_same_way_everywhere() -> None:
    """Expressions, -x context and secrets keys share one rule, so a name that
    parses in one place never fails later in another."""
    from rolekit.secrets import secret_key

    for attempt in (
        lambda: parse_contexts("eu.prod"),
        lambda: ContextExpression.parse("eu.prod or dev"),
        lambda: secret_key("my_app_tom", "eu.prod"),
    ):
        with pytest.raises(ContextExpressionError):
            attempt()


def test_parse_contexts_truncates_a_long_bad_name() -> None:
    with pytest.raises(ContextExpressionError) as info:
        parse_contexts("\x00" * 10_000)
    message = str(info.value)
    assert "'\\x00\\x00" in message
    assert "\x00" not in message
    assert len(message) < 250


def test_error_is_a_rolekit_error() -> None:
    assert issubclass(ContextExpressionError, RolekitError)


# --- evaluation -------------------------------------------------------------

D, P, L, E, U = "dev", "prod", "local", "eu", "us"


@pytest.mark.parametrize(
    ("text", "active", "expected"),
    [
        ("dev", {D}, True),
        ("dev", {P}, False),
        ("DEV", {D}, True),
        ("dev", {"DEV"}, True),  # active names are lowered too
        ("dev or local", {L}, True),
        ("dev OR local", {P}, False),
        ("dev and local", {D}, False),
        ("dev AnD local", {D, L}, True),
        ("!prod", {D}, True),
        ("!prod", {P}, False),
        ("not prod", {D}, True),
        ("NOT prod", {P}, False),
        ("!!prod", {P}, True),
        ("not !not prod", {D}, True),
        ("!" * 996 + "dev", {D}, True),  # even count: no negation, no recursion
        ("not(prod)", {D}, True),
        ("dev,local", {L}, True),
        ("dev , local", {P}, False),
        ("eu-west-1", {"eu-west-1"}, True),
        # precedence: not > and > or > ,
        ("!dev and local", {D, L}, False),  # (!dev) and local
        ("!(dev and local)", {D}, True),
        ("dev or local and prod", {D}, True),  # dev or (local and prod)
        ("(dev or local) and prod", {D}, False),
        ("dev and local or prod", {P}, True),  # (dev and local) or prod
        ("dev and (local or prod)", {P}, False),
        ("dev and local, prod", {P}, True),  # (dev and local), prod
        ("dev, local and prod", {D}, True),  # dev, (local and prod)
        ("dev or local, prod and eu", {P}, False),
        ("dev or local, prod and eu", {P, E}, True),
        ("!prod and (eu, us)", {D, U}, True),
        ("!prod and (eu, us)", {P, U}, False),
        ("!prod and (eu, us)", {D}, False),
        ("((((dev))))", {D}, True),
        ("(((dev or (local and (!prod)))))", {L}, True),
        ("(((dev or (local and (!prod)))))", {L, P}, False),
        (" \t dev\n and\r\nlocal ", {D, L}, True),
        ("(" * 50 + "dev" + ")" * 50, {D}, True),  # the nesting limit itself
        ("d" + " " * (MAX_EXPRESSION_LENGTH - 1), {"d"}, True),  # the length limit
    ],
)
def test_matches(text: str, active: set[str], expected: bool) -> None:
    assert ContextExpression.parse(text).matches(frozenset(active)) is expected


@pytest.mark.parametrize("text", ["dev", "!prod", "not prod", "dev or !dev"])
@pytest.mark.parametrize("active", [frozenset(), set(), None])
def test_no_context_never_matches(text: str, active: frozenset[str] | None) -> None:
    expression = ContextExpression.parse(text)
    assert expression.matches(active) is False
    assert expression.explain(active) == f"no context given; {text!r} needs one"


def test_text_and_names() -> None:
    expression = ContextExpression.parse("!Prod and (EU, us) or prod")
    assert expression.text == "!Prod and (EU, us) or prod"
    assert expression.names() == frozenset({"prod", "eu", "us"})
    assert repr(expression) == "ContextExpression('!Prod and (EU, us) or prod')"
    assert ContextExpression("dev").matches({"dev"})


@pytest.mark.parametrize(
    ("active", "expected"),
    [
        ({"dev"}, "matches 'dev or local'"),
        ({"prod"}, "context 'prod' does not match 'dev or local'"),
        ({"us", "prod"}, "contexts 'prod', 'us' do not match 'dev or local'"),
    ],
)
def test_explain(active: set[str], expected: str) -> None:
    assert ContextExpression.parse("dev or local").explain(frozenset(active)) == expected


def test_explain_truncates_long_expressions() -> None:
    text = " or ".join(f"ctx{i}" for i in range(100))
    reason = ContextExpression.parse(text).explain(frozenset({"prod"}))
    assert reason.startswith("context 'prod' does not match 'ctx0 or ctx1")
    assert reason.endswith("...")
    assert len(reason) < 120


# --- errors -----------------------------------------------------------------


def _error(text: str) -> str:
    with pytest.raises(ContextExpressionError) as info:
        ContextExpression.parse(text)
    return str(info.value)


def _caret_column(message: str) -> int:
    """The column the caret points at within the shown expression."""
    _, shown, caret = message.split("\n")
    assert shown.startswith("  ") and caret.startswith("  ")
    assert caret.strip() == "^"
    return caret.index("^") - 2


@pytest.mark.parametrize(
    ("text", "problem", "pos"),
    [
        ("", "context expression is empty", 0),
        ("   \t", "context expression is empty", 0),
        ("(dev", "'(' is never closed", 0),
        ("dev and (local or (prod)", "'(' is never closed", 8),
        ("dev)", "unmatched ')'", 3),
        ("(dev))", "unmatched ')'", 5),
        ("()", "expected a context name or '(' after '(', found ')'", 1),
        (")", "expected a context name or '(', found ')'", 0),
        (
            "dev and",
            "expected a context name or '(' after 'and', the expression ends",
            7,
        ),
        ("dev or", "after 'or', the expression ends", 6),
        ("dev,", "after ',', the expression ends", 4),
        ("!", "after '!', the expression ends", 1),
        ("dev not", "expected 'and', 'or' or ',' before 'not'", 4),
        ("and dev", "expected a context name or '(', found 'and'", 0),
        ("dev or or local", "after 'or', found 'or'", 7),
        ("dev and , local", "after 'and', found ','", 8),
        ("(dev and) local", "after 'and', found ')'", 8),
        ("dev prod", "expected 'and', 'or' or ',' before 'prod'", 4),
        ("dev (prod)", "expected 'and', 'or' or ',' before '('", 4),
        ("(dev prod)", "expected 'and', 'or', ',' or ')' before 'prod'", 5),
        ("dev & prod", "unexpected character '&'", 4),
        ("dev || prod", "unexpected character '|'", 4),
        ("dev and pr\u00f6d", "unexpected character '\u00f6'", 10),
        ("dev\x1b[31m", "unexpected character '\\x1b'", 3),
        ("'dev'", 'unexpected character "\'"', 0),
        ("dev and " + "x" * 64, "context name longer than 63 characters", 8),
        ("(" * 51 + "dev" + ")" * 51, "parentheses nested deeper than 50", 50),
        ("x" * 1001, "expression longer than 1000 characters", 1000),
    ],
)
def test_errors(text: str, problem: str, pos: int) -> None:
    message = _error(text)
    first = message.split("\n")[0]
    assert first.startswith("invalid context expression: ")
    assert problem in first
    assert first.endswith(f" at position {pos + 1}")
    column = _caret_column(message)
    shown = message.split("\n")[1][2:]
    if len(text) <= 80:
        assert shown == text.replace("\t", " ").replace("\x1b", "?")
        assert column == pos
    else:
        assert len(shown) <= 86  # 80 characters plus "..." either side


def test_error_window_follows_the_error_in_long_expressions() -> None:
    text = "dev or " * 100 + "prod &"
    message = _error(text)
    shown = message.split("\n")[1][2:]
    assert shown.startswith("...") and not shown.endswith("...")
    assert shown[_caret_column(message)] == "&"
    assert message.split("\n")[0].endswith(f"at position {len(text)}")


def test_error_hides_control_characters() -> None:
    message = _error("dev\x1b]0;pwned\x07 and")
    assert "\x1b" not in message and "\x07" not in message


@pytest.mark.parametrize(
    "text",
    [
        "x" * 10_000_000,  # 10 MB
        "(" * 100_000,
        "(" * 100_000 + "dev" + ")" * 100_000,
        "!" * 10_000_000,
        "dev and " * 1_000_000,
    ],
    ids=["10MB-name", "100k-open", "100k-balanced", "10MB-bang", "8MB-and"],
)
def test_huge_inputs_fail_fast_and_cleanly(text: str) -> None:
    started = time.perf_counter()
    message = _error(text)
    assert time.perf_counter() - started < 0.5
    assert "expression longer than 1000 characters at position 1001" in message
    assert len(message) < 300


def test_deep_nesting_within_the_length_limit_fails_cleanly() -> None:
    message = _error("(" * MAX_EXPRESSION_LENGTH)
    assert "parentheses nested deeper than 50 at position 51" in message
    message = _error("!(" * 500)
    assert "parentheses nested deeper than 50 at position 102" in message


# --- property: agrees with Python's own boolean evaluation ------------------

POOL = ("dev", "prod", "eu-west-1", "us_2", "local")


@st.composite
def _expressions(draw: st.DrawFn, depth: int = 0) -> tuple[str, str, int]:
    """Draw ``(rolekit text, Python text, level)``; level 1=or 2=and 3=not 4=atom.

    The rolekit text gets random spelling, spacing, ``!``/``not``, ``or``/``,``
    and needless parentheses, but only the parentheses precedence requires;
    Python, whose ``not > and > or`` matches ours, must agree on every result.
    """
    kinds = ["name"] if depth >= 4 else ["name", "name", "not", "and", "or"]
    kind = draw(st.sampled_from(kinds))
    if kind == "name":
        index = draw(st.integers(0, len(POOL) - 1))
        spelled = draw(st.sampled_from([str.lower, str.upper, str.title]))(POOL[index])
        return spelled, f"n{index}", 4
    if kind == "not":
        text, python, level = draw(_expressions(depth + 1))
        if level < 3 or draw(st.booleans()):
            text, python = f"({text})", f"({python})"
        prefix = draw(st.sampled_from(["!", "! ", "not ", "NOT ", "Not\t"]))
        return prefix + text, f"not {python}", 3
    operands = draw(st.lists(_expressions(depth + 1), min_size=2, max_size=3))
    level = 1 if kind == "or" else 2
    spellings = (
        [" or ", " OR ", ",", " , ", "\nor "] if kind == "or" else [" and ", " AND ", "\tand "]
    )
    text, python = "", ""
    for i, (sub_text, sub_python, sub_level) in enumerate(operands):
        if sub_level < level or draw(st.booleans()):
            sub_text, sub_python = f"({sub_text})", f"({sub_python})"
        if i:
            text += draw(st.sampled_from(spellings))
            python += f" {kind} "
        text, python = text + sub_text, python + sub_python
    return text, python, level


@settings(max_examples=500, database=None, deadline=None)
@given(
    expression=_expressions(),
    active=st.frozensets(st.sampled_from(POOL), min_size=1),
)
def test_agrees_with_python_eval(expression: tuple[str, str, int], active: frozenset[str]) -> None:
    text, python, _ = expression
    assume(len(text) <= MAX_EXPRESSION_LENGTH)
    env = {f"n{i}": name in active for i, name in enumerate(POOL)}
    expected = eval(python, {"__builtins__": {}}, env)  # generated, no builtins
    parsed = ContextExpression.parse(text)
    assert parsed.matches(active) is expected
    assert parsed.matches(frozenset()) is False
    assert parsed.names() <= frozenset(POOL)
    assert parsed.explain(active).startswith("matches" if expected else "context")
