"""experiments.time_to_accuracy: docs/results.md's table is the one its points file gives,
the plot is drawn, and a bad points file is refused in one line."""

from pathlib import Path

import pytest

from experiments import time_to_accuracy as T
from experiments.errors import UsageFailure

ROOT = Path(__file__).resolve().parents[2]


def test_the_results_page_shows_the_table_of_the_points_file():
    table = T.markdown_table(T.read_points(T.DEFAULT_POINTS))
    assert table in (ROOT / "docs" / "results.md").read_text()
    assert len(table.splitlines()) == 2 + len(T.read_points(T.DEFAULT_POINTS))


def test_the_plot_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    points = T.read_points(T.DEFAULT_POINTS)
    path = T.plot(points, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_seed_has_no_spread_and_a_missing_memory_figure_shows_as_a_dash(tmp_path):
    points = tmp_path / "points.csv"
    points.write_text(
        ",".join(T.COLUMNS) + "\nx,`r.cfg`,0,0.9,,0.89,10,9,0.1,,cpu\n"
        "y,`r.cfg`,0–2,0.91,0.002,0.9,12,11,0.1,2.5,cpu\n"
    )
    rows = T.markdown_table(T.read_points(points)).splitlines()[2:]
    assert rows[0] == "| `r.cfg` | 0 | 0.9000 | 0.8900 | 10.0 min | 9.0 min | 0.100 | – | cpu |"
    assert "| 0.9100 ± 0.0020 |" in rows[1] and "| 2.5 GB |" in rows[1]


@pytest.mark.parametrize(
    "text, match",
    [
        ("label,recipe\nx,y\n", r"has no column\(s\) \['seeds'"),
        (",".join(T.COLUMNS) + "\nx,r,0,ninety,,0.9,1,1,1,,c\n", "line 2: could not convert"),
    ],
)
def test_a_bad_points_file_is_refused_naming_it(tmp_path, text, match):
    points = tmp_path / "points.csv"
    points.write_text(text)
    with pytest.raises(UsageFailure, match=match):
        T.read_points(points)
    with pytest.raises(UsageFailure, match="cannot be read"):
        T.read_points(tmp_path / "missing.csv")
