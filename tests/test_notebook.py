"""notebooks/inspect.ipynb runs top to bottom (committed without outputs) on a tiny run folder."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import torch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "inspect.ipynb"


def _fake_run(repo: Path, runs_root: str = "runs/demo", name: str = "nar") -> Path:
    """A run folder as `nar demo` run in ``repo`` writes it (``<repo>/<runs_root>/<name>``): Lightning-style checkpoint
    whose config stores paths relative to ``repo`` (as given there), TensorBoard scalars, metrics. Returns it."""
    from torch.utils.tensorboard import SummaryWriter

    from nar.config import load_config, to_dict
    from nar.model import NARModel
    from nar.runs import TrainConfig
    from nar.tokenizers import build_tokenizer, save_tokenizer

    tok = f"{runs_root}/tokenizer/tokenizer.pt"
    save_tokenizer(build_tokenizer("vq-tiny-emoji"), repo / tok)
    cfg = load_config(TrainConfig, [], ["model.dim=32", "model.n_layer=1", "model.n_head=2", "model.vocab_size=512",
                                 "model.grid=[8,8]", "model.num_classes=4", f"tokenizer.path={tok}",
                                 f"runs_root={runs_root}", f"name={name}"])
    run = repo / cfg.run_dir
    state = {f"model.{k}": v for k, v in NARModel(cfg.model).state_dict().items()}
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"pytorch-lightning_version": "2", "hyper_parameters": {"cfg": to_dict(cfg)}, "state_dict": state,
                "global_step": 2}, run / "checkpoints" / "last.ckpt")
    writer = SummaryWriter(str(run / "tb"))
    for step, loss in enumerate([6.2, 5.0, 4.1]):
        writer.add_scalar("train/loss", loss, step)
    writer.close()
    (run / "metrics.jsonl").write_text('{"step": 2, "val/fid": 300.0}\n')
    return run


def test_notebook_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    for cell in nb.cells:
        if cell.cell_type == "code":
            imports = [line for line in cell.source.splitlines() if line.startswith(("import ", "from "))]
            assert all(line.split()[1].split(".")[0] in {"nar", "os", "time", "pathlib", "matplotlib", "torch"}
                       for line in imports), imports


def test_notebook_executes(tmp_path: Path, monkeypatch) -> None:
    """As Jupyter runs it: from ``<repo>/notebooks``, with a relative NAR_RUN (the repository's runs/ is found) and a
    run config whose paths are relative to the repository (the stored tokenizer is found and decodes)."""
    from nbclient import NotebookClient

    repo = tmp_path / "repo"
    run = _fake_run(repo)
    (repo / "notebooks").mkdir()
    monkeypatch.setenv("NAR_RUN", "runs/demo/nar")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # The kernel is this interpreter (the venv's ipykernel), registered in a temporary folder: nothing is
    # installed or fetched, and a system-wide "python3" kernel cannot shadow it.
    from ipykernel.kernelspec import write_kernel_spec

    kernels = tmp_path / "jupyter" / "kernels"
    kernels.mkdir(parents=True)
    write_kernel_spec(kernels / "nar-venv", overrides={"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                                                                "{connection_file}"], "display_name": "nar venv"})
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="nar-venv",
                            resources={"metadata": {"path": str(repo / "notebooks")}})
    client.execute()
    text = "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert f"run: {run}" in text and "forward passes per image: NAR 15 raster 64" in text
    assert f"tokenizer: {repo / 'runs/demo/tokenizer/tokenizer.pt'}" in text


def test_notebook_says_when_it_has_no_run(tmp_path: Path, monkeypatch, capsys) -> None:
    """No run at NAR_RUN: the first cell says so, naming the path, instead of quietly going on with random weights."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first = next(c.source for c in nb.cells if c.cell_type == "code")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NAR_RUN", "runs/missing/nar")
    scope: dict = {}
    exec(compile(first, "cell1", "exec"), scope)
    out = capsys.readouterr().out
    assert scope["HAVE_RUN"] is False and "runs/missing/nar/checkpoints/last.ckpt" in out and "RANDOM-WEIGHT" in out
