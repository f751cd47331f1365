"""docs/benchmarks.md and README's benchmark table are what tools/benchmarks_page.py generates from the records, and
the page follows the records: the newest record per machine, a changed figure changed on the page."""

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_independent  # CI runs it in the TensorFlow pass only (README: Tests)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import benchmarks_page as page

RUN = "run `python tools/benchmarks_page.py` and commit its output"


def test_the_committed_page_is_what_the_records_generate():
    committed = (ROOT / "docs" / "benchmarks.md").read_text() if (ROOT / "docs" / "benchmarks.md").exists() else None
    assert committed == page.render_page(ROOT / "benchmarks" / "results"), f"docs/benchmarks.md is stale: {RUN}"


def test_readmes_marked_table_is_what_the_records_generate():
    readme = (ROOT / "README.md").read_text()
    generated = page.replace_block(readme, page.render_readme_block(ROOT / "benchmarks" / "results"))
    if generated is None:
        pytest.skip(f"README.md has no {page.START} ... {page.END} markers: nothing to check")
    assert readme == generated, f"README.md's benchmark table is stale: {RUN}"


def latest_rows(text: str) -> list[str]:
    section = text.split("## Latest per machine class", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| small |")]


def test_the_page_shows_the_newest_record_per_machine_and_follows_a_changed_figure(tmp_path):
    real = json.loads((ROOT / "benchmarks" / "results" / "small-tensorflow-amx-2026-12-01.json").read_text())
    results = tmp_path / "results"
    results.mkdir()

    def write(name: str, date: str, machine: str, total_s: float) -> None:
        record = json.loads(json.dumps(real))
        record.update(date=date, machine=machine)
        for row in record["rows"]:
            if row["who"] == "tuner-app":
                row["total_s"] = total_s
        (results / name).write_text(json.dumps(record))

    write("small-a-old.json", "2026-01-01", "Machine A", 11.11)
    write("small-a-new.json", "2026-03-01", "Machine A", 22.22)
    write("small-b.json", "2026-02-01", "Machine B", 33.33)
    text = page.render_page(results)
    rows = latest_rows(text)
    assert len(rows) == 2, rows  # one per machine
    (a,) = [r for r in rows if "| Machine A |" in r]
    (b,) = [r for r in rows if "| Machine B |" in r]
    assert "`small-a-new.json`" in a and "2026-03-01" in a and "22.2, 22.2" in a and "11.1" not in a
    assert "`small-b.json`" in b and "33.3, 33.3" in b
    assert "`small-a-old.json`" in text.split("## All records", 1)[1]  # not hidden: in the table of all records

    readme, docs = tmp_path / "README.md", tmp_path / "benchmarks.md"
    readme.write_text(f"# x\n\n{page.START}\nOLD TABLE\n{page.END}\n\nrest\n")
    args = ["--results", str(results), "--page", str(docs), "--readme", str(readme)]
    assert page.main(["--check", *args]) == 1 and not docs.exists()  # --check writes nothing
    assert page.main(args) == 0 and page.main(["--check", *args]) == 0
    assert docs.read_text() == text
    block = readme.read_text().split(page.START, 1)[1].split(page.END, 1)[0]
    assert "OLD TABLE" not in block and "`small-a-new.json`" in block and "`small-b.json`" in block
    assert readme.read_text().endswith(f"{page.END}\n\nrest\n")

    write("small-a-new.json", "2026-03-01", "Machine A", 44.44)  # a changed figure in the newest record
    changed = page.render_page(results)
    assert changed != text and "44.4, 44.4" in changed and "22.2" not in changed
    assert page.main(["--check", *args]) == 1


def test_a_record_without_the_newer_fields_shows_dashes(tmp_path):
    real = json.loads((ROOT / "benchmarks" / "results" / "small-tensorflow-amx-2026-12-01.json").read_text())
    for field in ("fold_mode_option", "ratio_total"):
        del real[field]
    for row in real["rows"]:
        row.pop("fold_mode", None)
        row.pop("peak_rss_mb", None)
    (tmp_path / "small-old.json").write_text(json.dumps(real))
    (tmp_path / "odd.json").write_text(json.dumps({"date": "2026-01-02", "command": "python something.py"}))
    text = page.render_page(tmp_path)
    (row,) = latest_rows(text)
    assert "| —, mixed_bfloat16 / float32 |" in row and "| —, — / —, — |" in row
    assert "## Other records" in text and "`odd.json`" in text and "`python something.py`" in text
