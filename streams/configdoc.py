"""docs/configuration.md, generated from ``streams.settings``: every ``ATTNFLOW_*`` variable with its default.

The text of each group is the comment above its fields in settings.py, so the page cannot drift from the
code: ``attnflow report`` rewrites it and a test checks that it is current.
"""
from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import MISSING, fields
from pathlib import Path

from streams.settings import PREFIX, Settings

SOURCE = Path(__file__).with_name("settings.py")
HEADER = """# Configuration reference

Generated from `streams/settings.py` by `.venv/bin/python -m streams.report`; do not edit by hand.
Every setting is an environment variable `ATTNFLOW_<NAME>`; lists are comma-separated, booleans
`1/true/yes/on`. The README lists the ones most deployments set.
"""


def _comments(source: str) -> dict[int, str]:
    """Line number -> text of each comment in ``source`` (without the ``#``)."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def groups(source: str | None = None) -> list[tuple[str, list[tuple[str, str]]]]:
    """``[(comment, [(field, inline comment), ...]), ...]``: the fields of ``Settings`` in source order,
    grouped under the comment block that precedes them (a new block starts a new group).

    >>> names = [name for _, members in groups() for name, _ in members]
    >>> names[:2], "extra" in names
    (['kafka_bootstrap', 'kafka_security_protocol'], False)
    """
    source = SOURCE.read_text() if source is None else source
    comments = _comments(source)
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    out: list[tuple[str, list[tuple[str, str]]]] = []
    for node in cls.body:
        if not isinstance(node, ast.AnnAssign) or node.target.id == "extra":
            continue
        block, line = [], node.lineno - 1
        while line in comments and not source.splitlines()[line - 1].split("#")[0].strip():
            block.insert(0, comments[line])
            line -= 1
        inline = comments.get(node.lineno, "") if node.end_lineno == node.lineno else ""
        if block or not out:
            out.append((" ".join(block), []))
        out[-1][1].append((node.target.id, inline))
    return out


def _default(name: str) -> str:
    """The field's default as the page shows it; "?" for a field settings.py has but the imported class
    has not (the file was edited after the import)."""
    f = next((f for f in fields(Settings) if f.name == name), None)
    if f is None:
        return "?"
    value = f.default if f.default is not MISSING else f.default_factory()
    if name == "compile_cache_dir":
        return "`~/.cache/attnflow/jax`"
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, tuple):
        value = ",".join(value)
    return f"`{value}`" if value != "" else "(empty)"


def render() -> str:
    """The whole page: one row per group of settings, the group's comment beside its variables."""
    out = [HEADER, "| variables | defaults | what they do |", "|---|---|---|"]
    for comment, members in groups():
        names = "<br>".join(f"`{PREFIX}{name.upper()}`" for name, _ in members)
        defaults = "<br>".join(_default(name) for name, _ in members)
        notes = [comment] + [f"`{PREFIX}{name.upper()}`: {note}" for name, note in members if note]
        text = " ".join(n for n in notes if n).replace("``", "`").replace("|", "\\|")
        out.append(f"| {names} | {defaults} | {text} |")
    return "\n".join(out) + "\n"


def update_configuration(path: Path) -> None:
    path.write_text(render())


if __name__ == "__main__":
    print(render(), end="")
