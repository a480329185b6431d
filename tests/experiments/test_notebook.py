"""The assignment notebook runs top to bottom (tiny mode: synthetic data, small models)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.experiments.util import ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = ROOT / "experiments" / "notebooks" / "convolutional_networks.ipynb"
KERNEL = "jcnn-test-python"


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
    """A kernelspec that runs this interpreter (whatever the machine's own 'python3' is),
    found through JUPYTER_PATH; the kernel inherits the environment set here."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "jcnn test", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JCNN_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("JCNN_DATA_DIR", str(tmp_path / "no-data"))  # tiny mode loads none
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    return KERNEL


def test_notebook_is_clean():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 15
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs"


def test_notebook_runs_every_cell(kernel_name):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=240,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    text = "\n".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.get("output_type") == "stream"
    )
    assert "tiny mode: True" in text
    assert "Testing conv_forward_naive" in text and "dx error:" in text
    assert "(Epoch 1 / 1) train acc:" in text  # the Solver trained
    images = sum(
        "image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", [])
    )
    assert images >= 5  # image demo, loss, accuracy, filters x2
