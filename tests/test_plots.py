
import pytest
from conftest import run_cli

from tuner_app import plots
from tuner_app.results import load_results

pytestmark = pytest.mark.backend_independent  # CI runs it in the TensorFlow pass only (README: Tests)

PNG = b"\x89PNG\r\n\x1a\n"


def test_results_plot_has_one_point_per_fold_and_writes_a_png(searched, tmp_path):
    results = load_results(searched / "small")
    fig = plots.results_figure(results)
    from matplotlib.collections import PathCollection

    scattered = sum(len(c.get_offsets()) for c in fig.axes[0].collections if isinstance(c, PathCollection))
    assert scattered == sum(len(r["folds"]) for r in results) == 4
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[-1].startswith(f"filters={results[0]['hyperparameters']['filters']}")  # best on top

    out = tmp_path / "out.png"
    proc = run_cli("results", "--directory", searched, "--project", "small", "--plot", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 10_000


def test_plot_option_needs_a_png_name(searched, tmp_path):
    proc = run_cli("results", "--directory", searched, "--project", "small", "--plot", tmp_path / "x.jpg")
    assert proc.returncode == 2 and "--plot" in proc.stderr




