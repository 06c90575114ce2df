"""No SQL is built from strings: values reach ClickHouse only as query parameters
(``{name:Type}`` placeholders with ``parameters=``).

Every Python file under ripple/, streams/ and sinks/ is parsed; a statement keyword (SELECT,
INSERT INTO, ALTER TABLE, CREATE, DROP, OPTIMIZE TABLE, TRUNCATE, DELETE FROM, ...) in an
f-string with a replacement field, in a ``%``-formatted or ``.format()``-ed literal, or in a
literal joined with ``+`` to anything that is not a literal, fails the test. The project
writes SQL keywords in upper case, so the check looks for upper-case keywords only (log
messages such as ``f"insert into {table} failed"`` are not SQL).

Identifiers cannot be parameters. A place that must build one into a statement goes in
:data:`ALLOWED` with the reason it is safe (its names come from a fixed set or are checked).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ripple", "streams", "sinks")
STATEMENT = re.compile(
    r"\b(SELECT\b[\s\S]*\bFROM|INSERT\s+INTO|ALTER\s+TABLE|CREATE\s+(OR\s+REPLACE\s+)?"
    r"(TEMPORARY\s+)?(TABLE|DATABASE|VIEW|MATERIALIZED|DICTIONARY|USER|ROLE|FUNCTION)|"
    r"DROP\s+(TABLE|DATABASE|VIEW|DICTIONARY|USER|ROLE|PARTITION|COLUMN)|OPTIMIZE\s+TABLE|TRUNCATE\s+TABLE|"
    r"DELETE\s+FROM|ALTER\s+USER|GRANT\s|RENAME\s+TABLE|EXCHANGE\s+TABLES|SYSTEM\s)\b"
)
#: (file, enclosing function) -> why building that statement from a string is safe. Empty:
#: every statement is a constant with parameters. (``ClickHouse.insert`` names its table with
#: ``f"ripple.{table}"``, which holds no keyword; the name is checked against
#: ``[a-z_][a-z0-9_]*`` before it is used, and comes from the sink's fixed table list.)
ALLOWED: dict[tuple[str, str], str] = {}


def _literal_text(node: ast.AST) -> str | None:
    """The text of a string literal, with ``{}`` for each replacement field of an f-string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(str(v.value) if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def _concat_parts(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return [*_concat_parts(node.left), *_concat_parts(node.right)]
    return [node]


def built_sql(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, enclosing function, what) for every statement built from a string."""
    found: list[tuple[int, str, str]] = []
    parents: dict[ast.AST, ast.AST] = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            parents[child] = parent

    def function_of(node: ast.AST) -> str:
        while node in parents:
            node = parents[node]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                return node.name
        return "<module>"

    def report(node: ast.AST, what: str) -> None:
        found.append((getattr(node, "lineno", 0), function_of(node), what))

    for node in ast.walk(tree):
        # f"... SELECT ... {value}"
        if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.FormattedValue) for v in node.values):
            text = _literal_text(node) or ""
            if STATEMENT.search(text):
                report(node, "f-string")
        # "... %s ..." % value
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            template = _literal_text(node.left)
            if template is not None and STATEMENT.search(template):
                report(node, "% formatting")
        # "...".format(value)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("format", "format_map")
        ):
            template = _literal_text(node.func.value)
            if template is not None and STATEMENT.search(template):
                report(node, ".format()")
        # "SELECT ... " + value  (only the outermost + of a chain)
        elif (
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.Add)
            and not isinstance(parents.get(node), ast.BinOp)
        ):
            parts = _concat_parts(node)
            texts = [_literal_text(p) for p in parts]
            joined = "".join(t if t is not None else "{}" for t in texts)
            if any(t is None for t in texts) and STATEMENT.search(joined):
                report(node, "+ concatenation")
        # "".join([... "SELECT ..." ..., value])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join":
            for arg in node.args:
                items = arg.elts if isinstance(arg, ast.List | ast.Tuple) else []
                texts = [_literal_text(e) for e in items]
                if any(t is None for t in texts) and STATEMENT.search(" ".join(t or "{}" for t in texts)):
                    report(node, "str.join")
    return found


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_no_statement_is_built_from_strings() -> None:
    offenders = []
    used = set()
    for path in sources():
        relative = str(path.relative_to(ROOT))
        for line, function, what in built_sql(ast.parse(path.read_text(), str(path))):
            if (relative, function) in ALLOWED:
                used.add((relative, function))
                continue
            offenders.append(f"{relative}:{line} in {function}(): SQL built with {what}")
    assert not offenders, "use {name:Type} placeholders and parameters= instead:\n" + "\n".join(offenders)
    assert used == set(ALLOWED), f"allowlist entries no longer needed: {sorted(set(ALLOWED) - used)}"


BAD = """
def by_fstring(table, v):
    return f"SELECT * FROM {table} WHERE id = {v}"
def by_percent(v):
    return "SELECT x FROM t WHERE id = '%s'" % v
def by_format(v):
    return "ALTER TABLE t DELETE WHERE id = {}".format(v)
def by_plus(v):
    return "INSERT INTO t VALUES (" + v + ")"
def by_join(name):
    return " ".join(["DROP TABLE", name])
def by_optimize(t):
    return f"OPTIMIZE TABLE {t} FINAL"
"""
GOOD = """
def parameters(ch, model):
    return ch.query("SELECT x FROM t WHERE model = {model:String}", {"model": model})
def implicit_concatenation():
    return ("SELECT a "
            "FROM t")
def a_log_line(table, exc):
    return f"insert into {table} failed: {exc}"
def constant_plus():
    return "SELECT 1 " + "FROM t"
"""


@pytest.mark.parametrize(
    "source, expected",
    [
        (BAD, ["by_fstring", "by_percent", "by_format", "by_plus", "by_join", "by_optimize"]),
        (GOOD, []),
    ],
    ids=["every way of building SQL is caught", "parameters, constants and log lines pass"],
)
def test_the_check_itself(source: str, expected: list[str]) -> None:
    assert [function for _, function, _ in built_sql(ast.parse(source))] == expected
