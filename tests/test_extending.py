"""A dataset, a model family and a plot written as one file outside the package, loaded with --plugin,
reach every place a built-in one does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

DATASET_PLUGIN = textwrap.dedent('''
    import numpy as np
    from lipbench.data import from_arrays, register_dataset

    @register_dataset("stripes", "horizontal against vertical stripes (a plugin's dataset)")
    def load(request):
        rng = np.random.default_rng(0)
        def images(n):
            labels = rng.integers(0, 2, n)
            x = np.zeros((n, 8, 8), np.float32)
            x[labels == 0, ::2, :] = 1.0
            x[labels == 1, :, ::2] = 1.0
            return np.clip(x + 0.1 * rng.random((n, 8, 8), dtype=np.float32), 0, 1), labels
        return from_arrays("stripes", *images(64), *images(32))
''')

PLOT_PLUGIN = textwrap.dedent('''
    from lipbench.report.plots import NothingToPlot, register_plot
    import matplotlib.pyplot as plt

    @register_plot("steps_vs_cra", "A plugin's plot: CRA at 36/255 against the training steps taken.")
    def draw(board, styles):
        shown = board.dropna(subset=["cra_36"])
        if shown.empty:
            raise NothingToPlot("needs finished runs")
        figure, axes = plt.subplots()
        axes.scatter(shown["epochs_done"], shown["cra_36"])
        return figure
''')


def lipbench(*arguments):
    return subprocess.run([sys.executable, "-m", "lipbench", *map(str, arguments)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "stripes.py").write_text(DATASET_PLUGIN)
    (folder / "steps_plot.py").write_text(PLOT_PLUGIN)
    return folder


def test_a_plugin_dataset_shows_in_help_and_trains(plugins, tmp_path):
    help_text = lipbench("run", "--plugin", plugins / "stripes.py", "--help").stdout
    assert "stripes" in " ".join(help_text.split())
    result = lipbench("run", "--plugin", plugins / "stripes.py", "--dataset", "stripes", "--layers", "lipnext",
                      "--budget", "3s", "--batch-size", "16", "--no-save-model", "--out", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (record_path,) = tmp_path.glob("jobs/*/record.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "ok" and record["dataset"] == "stripes" and record["n_classes"] == 2


def test_a_plugin_plot_appears_in_every_page(plugins, tmp_path):
    assert lipbench("run", "--layers", "lipnext", "--dataset", "synthetic", "--budget", "3s", "--batch-size", "16",
                    "--no-save-model", "--out", tmp_path).returncode == 0
    result = lipbench("report", tmp_path, "--plugin", plugins / "steps_plot.py")
    assert result.returncode == 0, result.stdout + result.stderr
    caption = "A plugin's plot: CRA at 36/255 against the training steps taken."
    for page in ("report.html", "report.md"):
        assert caption in (tmp_path / "report" / page).read_text().replace("&#x27;", "'")
    assert (tmp_path / "report" / "steps_vs_cra.png").stat().st_size > 0
    assert (tmp_path / "report" / "steps_vs_cra.svg").stat().st_size > 0
