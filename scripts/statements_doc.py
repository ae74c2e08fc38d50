"""Write the SQL that each composed statement compiles to on PostgreSQL into
docs/architecture.md, between the lines BEGIN and END below, leaving the rest of the
document as it is. Compiling needs no database.

    python -m scripts.statements_doc            rewrite the section
    python -m scripts.statements_doc --check    exit 1 when the section is out of date

The SQL is what the psycopg dialect compiles, changed for the reader only in layout
(a clause a line, indented by depth) and in showing the constants a statement carries
(statuses, NULLs, increments) as literals rather than as anonymous parameters.
`%(name)s` is a parameter the code binds.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import ClauseElement, Dialect
from sqlalchemy.dialects.postgresql.psycopg import PGCompiler_psycopg, PGDialect_psycopg
from sqlalchemy.sql.elements import BindParameter

from app.jobs.step_changes import postgres

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
BEGIN = "<!-- BEGIN GENERATED: statements -->"
END = "<!-- END GENERATED: statements -->"
COMMAND = "python -m scripts.statements_doc"

# The step columns app/jobs/service.py gives a new job's steps: the insert is built for
# the columns given (see insert_job_at_once).
NEW_STEP_KEYS = (
    "step_index",
    "step_name",
    "queue",
    "status",
    "attempt",
    "fence",
    "max_attempts",
    "queued_at",
)

# Every composed statement with its builder's arguments, in the order a job meets them.
STATEMENTS: Sequence[tuple[Callable[..., ClauseElement], tuple[object, ...]]] = (
    (postgres.insert_job_at_once, (NEW_STEP_KEYS,)),
    (postgres.start_step_at_once, ()),
    (postgres.start_named_step_at_once, ()),
    (postgres.park_step_at_once, ()),
    (postgres.park_named_step_at_once, ()),
    (postgres.finish_step_at_once, ()),
    (postgres.continue_at_once, ()),
    (postgres.finish_last_step_at_once, ()),
)


class _ReadableCompiler(PGCompiler_psycopg):
    """Renders a parameter that carries its value (a constant of the statement) as a
    literal; a parameter bound at execution as psycopg receives it."""

    def visit_bindparam(
        self,
        bindparam: BindParameter[Any],
        within_columns_clause: bool = False,
        literal_binds: bool = False,
        skip_bind_expression: bool = False,
        literal_execute: bool = False,
        render_postcompile: bool = False,
        is_upsert_set: bool = False,
        **kwargs: Any,
    ) -> str:
        constant = not bindparam.required and bindparam.callable is None
        # SQLAlchemy's compiler is untyped; what it renders is the statement's text.
        render: Callable[..., str] = super().visit_bindparam
        return render(
            bindparam,
            within_columns_clause,
            literal_binds or constant,
            skip_bind_expression,
            literal_execute,
            render_postcompile,
            is_upsert_set,
            **kwargs,
        )


class _ReadableDialect(PGDialect_psycopg):
    statement_compiler = _ReadableCompiler


# Where a clause starts a line (the compiler already starts FROM and WHERE of a SELECT).
_CLAUSE = re.compile(
    r" (?=(SELECT|VALUES|SET|FROM|WHERE|RETURNING|ORDER BY|UNION ALL|LEFT OUTER JOIN) )"
    r"|(?<!OUTER) (?=JOIN )"
)
_QUOTED = re.compile(r"'[^']*'")


def compiled_sql(statement: ClauseElement) -> str:
    """The statement as PostgreSQL receives it, laid out for reading: each clause on a
    line of its own, indented by how deep in parentheses it starts."""
    dialect_class: type[Dialect] = _ReadableDialect
    sql = str(statement.compile(dialect=dialect_class()))
    lines, depth = [], 0
    for line in _CLAUSE.sub("\n", sql).splitlines():
        if line.strip():
            lines.append("    " * depth + line.strip())
            unquoted = _QUOTED.sub("", line)
            depth += unquoted.count("(") - unquoted.count(")")
    return "\n".join(lines)


def _statement_doc(builder: Callable[..., ClauseElement], args: tuple[object, ...]) -> str:
    module = inspect.getmodule(builder)
    where = module.__name__ if module is not None else "?"
    doc = inspect.getdoc(builder) or ""
    return "\n".join(
        [
            f"### `{builder.__name__}` ({where})",
            "",
            _markdown(doc),
            "",
            "```sql",
            compiled_sql(builder(*args)),
            "```",
        ]
    )


def _markdown(doc: str) -> str:
    """The docstring, its Takes, Changes and Returns each a paragraph of its own."""
    return re.sub(r"\n+(Takes|Changes|Returns):", r"\n\n**\1**:", doc)


def render() -> str:
    """The generated section, markers included."""
    parts = [
        BEGIN,
        f"<!-- Written by `{COMMAND}` from app/jobs/step_changes/postgres/: edit those, "
        "then run it. -->",
        "",
        *(_statement_doc(builder, args) + "\n" for builder, args in STATEMENTS),
        END,
    ]
    return "\n".join(parts)


def rewritten(document: str) -> str:
    """`document` with its generated section replaced by the current one."""
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{DOC} has no section between {BEGIN!r} and {END!r}")
    return document[:start] + render() + document[end + len(END) :]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only say whether it is current")
    args = parser.parse_args(argv)
    document = DOC.read_text(encoding="utf-8")
    current = rewritten(document)
    if args.check:
        if current != document:
            print(f"{DOC.relative_to(ROOT)} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(current, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
