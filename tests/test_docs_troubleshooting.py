"""docs/troubleshooting.md has an entry for every error of tests/test_cli_errors.py's tables.

The key is the message, not the case's id. tests/test_cli_errors.py is the one table of the CLI's
error messages: each case gives the fragment of the message it asserts (`fragment`). A user who
meets an error searches the page for what the terminal says, so the page must quote that text;
the case ids ("missing data path") are the tests' own names, which no user sees, and would pin
the page's wording to the tests' rather than to the tool's.

A fragment's words are matched verbatim, in order, within one row of one of the page's tables,
except its variable tokens: a token holding a digit or a path separator (a count, a shape, a
line number, a path) matches any text in its place, so the page may show `--data PATH: ...`
where the case used `/nonexistent/mnist`. The row's exit column must say 2, the exit code that
test_cli_errors.py asserts for all of them.

Every parametrized table of test_cli_errors.py with a `fragment` argument is read when this test
runs, so a case added there fails here until the page has its entry.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import test_cli_errors

pytestmark = pytest.mark.backend_independent  # CI runs it in the TensorFlow pass only

PAGE = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"


def _cases() -> list[tuple[str, str]]:
    """(id, fragment) of every case of test_cli_errors.py's parametrized tables that name a fragment."""
    found = []
    for name, test in sorted(vars(test_cli_errors).items()):
        if not name.startswith("test_"):
            continue
        for mark in getattr(test, "pytestmark", []):
            if mark.name != "parametrize":
                continue
            argnames = mark.args[0]
            argnames = [a.strip() for a in argnames.split(",")] if isinstance(argnames, str) else list(argnames)
            if "fragment" not in argnames:
                continue
            at = argnames.index("fragment")
            ids = mark.kwargs.get("ids")
            for i, values in enumerate(mark.args[1]):
                found.append((ids[i] if ids else f"{name}[{i}]", values[at]))
    return found


CASES = _cases()


def _variable(token: str) -> bool:
    return any(c.isdigit() for c in token) or "/" in token


def pattern(fragment: str) -> re.Pattern:
    """The fragment's words in order; a run of variable tokens matches any text in its place."""
    parts: list[str] = []
    for token in fragment.split():
        if not _variable(token):
            parts.append(re.escape(token))
        elif not parts or parts[-1] != ".+?":
            parts.append(".+?")
    return re.compile(r"\s+".join(parts))


def rows(page: str) -> list[list[str]]:
    """The cells of every table row of the page (header and separator rows too)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in page.splitlines() if line.lstrip().startswith("|")]


def entry(page: str, fragment: str) -> list[str] | None:
    """The first table row whose message matches the fragment and whose exit column says 2."""
    wanted = pattern(fragment)
    for cells in rows(page):
        if len(cells) >= 2 and cells[1] == "2" and wanted.search(" ".join(cells[0].split())):
            return cells
    return None


def test_the_tables_are_read():
    assert len(CASES) >= 50, CASES  # the search table alone has more; an empty read would pass vacuously
    assert {"missing data path", "model not compiled"} <= {case_id for case_id, _ in CASES}


@pytest.mark.parametrize("fragment", [f for _, f in CASES], ids=[i for i, _ in CASES])
def test_every_error_of_the_cli_table_has_its_entry(fragment):
    assert entry(PAGE.read_text(), fragment), (
        f"docs/troubleshooting.md has no table row with exit code 2 whose message matches {fragment!r}; "
        "add one (message, exit, what to do) to the page's section for it")


def test_the_check_fails_without_the_entry():
    page = ("| message | exit | what to do |\n| --- | --- | --- |\n"
            "| `--data PATH: no such file or directory; give an .npz file` | 2 | check the path |\n")
    assert entry(page, "--data /nonexistent/mnist: no such file or directory")  # a path is variable
    assert not entry(page, "--data /nonexistent/mnist: no such folder")  # a word is not
    assert not entry(page, "the .npz lacks y_test")  # a message the page lacks
    assert not entry(page.replace("| 2 |", "| 1 |"), "--data /x: no such file or directory")  # another exit code
    assert not entry(page.replace("no such file", "such no file"), "--data /x: no such file")  # the order counts
