"""docs/architecture.md shows the SQL every composed statement compiles to on PostgreSQL:
the section that scripts/statements_doc.py writes is current. Compiling needs no
database."""

from __future__ import annotations

from scripts.statements_doc import COMMAND, DOC, ROOT, rewritten


def test_the_document_shows_the_sql_the_composed_statements_compile_to() -> None:
    document = DOC.read_text(encoding="utf-8")
    assert rewritten(document) == document, (
        f"{DOC.relative_to(ROOT)} is out of date with the composed statements: run `{COMMAND}`"
    )
