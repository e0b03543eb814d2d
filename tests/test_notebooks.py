"""The notebooks are documentation that runs: each is executed here, and stored without outputs."""

from pathlib import Path

import nbformat
import pytest

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))


def test_the_promised_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    for want in ("probes", "knowledge_entropy", "patching", "steering", "latent_cot", "dpo_policy_shift"):
        assert want in names, f"notebooks/{want}.ipynb is missing; found {sorted(names)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped_and_uses_public_api(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has stored outputs"
            assert "._" not in cell.source.replace("__", ""), f"{path.name} reaches into a private attribute"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
