"""experiments.progress: throughput and time left beside the cs231n lines."""

import io
import types

import numpy as np

from experiments import progress as P
from jcnn.models import ThreeLayerConvNet
from jcnn.solver import Solver


def test_durations_read_as_clock_times():
    assert P.format_duration(0) == "00:00"
    assert P.format_duration(125.4) == "02:05"
    assert P.format_duration(3723) == "1:02:03"


def test_progress_line_with_and_without_a_bar():
    plain = P.progress_line(25, 100, 50.0, 10, bar=False)
    assert plain == "25.0% done, 50 img/s, 00:15 left"  # 75 updates x 10 images / 50 img/s
    barred = P.progress_line(25, 100, 50.0, 10, bar=True)
    assert barred.startswith("[#####---------------]") and barred.endswith("00:15 left")
    assert P.progress_line(0, 100, None, 10, bar=False) == "0.0% done, measuring speed"


class _Run:
    """A run whose clock reads what the test sets."""

    def __init__(self):
        self.training = 100.0

    def training_s(self):
        return self.training


def test_throughput_counts_the_runs_training_time_after_compilation():
    out = io.StringIO()
    prog = P.Progress(10, stream=out)
    solver = types.SimpleNamespace(iteration=20, num_iterations=120, run=_Run())
    prog.start(solver)  # a resumed run
    solver.run.training += 30.0  # the first update, compilation included
    prog(solver, 21)
    solver.run.training += 10.0  # the run's clock leaves out accuracy checks
    prog(solver, 71)  # 50 updates x 10 images in 10 s of training
    assert out.getvalue().splitlines() == [
        "17.5% done, measuring speed",
        "59.2% done, 50 img/s, 00:10 left",
    ]


def test_the_solver_reports_progress_with_every_progress_line():
    rng = np.random.default_rng(0)
    data = {
        "X_train": rng.normal(size=(40, 3, 8, 8)).astype(np.float32),
        "y_train": rng.integers(0, 10, 40),
        "X_val": rng.normal(size=(8, 3, 8, 8)).astype(np.float32),
        "y_val": rng.integers(0, 10, 8),
    }
    model = ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=2, filter_size=3, hidden_dim=4)
    seen = []
    solver = Solver(
        model, data, batch_size=10, num_epochs=2, print_every=3, verbose=False,
        on_progress=lambda s, it: seen.append((it, len(s.loss_history))),
    )  # fmt: skip
    solver.train()
    # iterations 1, 4, 7 of 8 (t % print_every == 0); their losses are read back by then
    assert seen == [(1, 1), (4, 4), (7, 7)]
