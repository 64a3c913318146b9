"""README's benchmark table is what `python -m benchmarks.table` makes of benchmarks/RESULTS.md."""

from __future__ import annotations

import pytest

from benchmarks import table
from benchmarks.common import table_row


def test_readme_table_matches_results():
    readme = table.README.read_text()
    expected = table.render(table.RESULTS.read_text())
    start, end = readme.find(table.START), readme.find(table.END)
    assert 0 <= start < end, "README.md lacks the benchmark-table markers"
    assert readme[start:end + len(table.END)] == expected, \
        "README.md's benchmark table is out of date: run python -m benchmarks.table"


def test_every_figure_comes_from_a_run():
    """Each row is either a recorded run's figure or marked pending; every recorded row is in the table."""
    results = table.RESULTS.read_text()
    figures = table.latest_figures(results)
    assert len({row.id for row in table.ROWS}) == len(table.ROWS)
    assert set(figures) <= {row.id for row in table.ROWS}
    assert {row.id for row in table.pending(results)} == {row.id for row in table.ROWS} - set(figures)
    rendered = table.render(results)
    for row in table.ROWS:
        line = next(line for line in rendered.splitlines() if line.startswith(f"| {row.claim} |"))
        if row.id in figures:
            assert f"| {figures[row.id].measured} | {figures[row.id].status} |" in line
        else:
            assert "| pending |" in line


def test_newest_entry_wins_and_load_is_read():
    results = "\n".join([
        "# Benchmark results", "",
        "### Old run (2026-01-01)", "", "Load average during the run: 24.0 on 2 CPUs.",
        table_row("data_loader", "≥ 10×", "6,833×", "met"), "",
        "### New run (2026-02-01)", "", "Load (1-minute average) 0.9 at the start, 1.4 at the end, on 2 CPUs.",
        table_row("data_loader", "≥ 10×", "81× (77–85×)", "met"), "",
        "### Unrelated run (2026-03-01)", "", "no table row here",
    ])
    figure = table.latest_figures(results)["data_loader"]
    assert (figure.measured, figure.load, figure.entry) == ("81× (77–85×)", "0.9–1.4", "New run (2026-02-01)")
    assert table.latest_figures(results.split("### New")[0])["data_loader"].load == "24.0"


def test_a_row_no_run_measures_is_pending_and_an_unknown_row_is_an_error():
    results = "### A run (2026-01-01)\n\n" + table_row("data_loader", "≥ 10×", "81×", "met")
    rendered = table.render(results)
    assert "| 81× | met |" in rendered
    assert "| not measured yet: run `python -m benchmarks.data_tokenize` | pending |" in rendered
    assert [row.id for row in table.pending(results)] == [row.id for row in table.ROWS if row.id != "data_loader"]
    with pytest.raises(ValueError, match="rows the table does not list: no_such_claim"):
        table.render(results + "\n" + table_row("no_such_claim", "≥ 1×", "2×", "met"))


def test_cells_cannot_break_the_table():
    with pytest.raises(AssertionError):
        table_row("data_loader", "≥ 10×", "a | b", "met")
    readme = "intro\n" + table.START + "\nold\n" + table.END + "\nafter\n"
    assert table.replace_table(readme, "NEW") == "intro\nNEW\nafter\n"
    with pytest.raises(ValueError, match="markers"):
        table.replace_table("no markers here", "NEW")
