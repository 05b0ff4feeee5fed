"""The results of a grid: ``results.csv`` (written atomically, one complete row per variant), ``results.md``,
TensorBoard HParams and ``fid_vs_speed.png``."""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nar.atomic import atomic_path, write_text

log = logging.getLogger(__name__)

# CSV columns, in order. ``score`` is FID (images) or FVD / its Inception proxy (video), named by ``score_name``.
COLUMNS = ("variant", "label", "mode", "regions", "head_sharing", "shared_axis", "head_blocks", "head_layout", "mixing",
           "score_name", "score", "paper_score", "val_loss", "forward_passes", "images_per_s", "parameters",
           "steps", "train_seconds", "same_as", "fingerprint")
FLOATS = ("score", "paper_score", "val_loss", "images_per_s", "train_seconds")
INTS = ("shared_axis", "forward_passes", "parameters", "steps")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The finished rows of ``results.csv`` (numbers parsed; empty cells -> None)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="") as fh:
        for raw in csv.DictReader(fh):
            row: dict[str, Any] = dict(raw)
            for key in FLOATS:
                row[key] = float(row[key]) if row.get(key) not in (None, "") else None
            for key in INTS:
                row[key] = int(float(row[key])) if row.get(key) not in (None, "") else None
            rows.append(row)
    return rows


def write_rows(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rewrite ``results.csv`` atomically (temporary file + rename): a reader never sees half a row."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in COLUMNS})
    write_text(path, buf.getvalue())


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def ordering_agreement(rows: Sequence[dict[str, Any]]) -> tuple[int, int] | None:
    """Pairs of rows (both with a paper score, distinct configurations) ordered the same way by our score and
    the paper's: ``(agreeing, total)``; None when fewer than two such rows."""
    scored = [r for r in rows if r.get("paper_score") is not None and r.get("score") is not None and not r.get("same_as")]
    pairs = [(a, b) for i, a in enumerate(scored) for b in scored[i + 1:]]
    if not pairs:
        return None
    agree = sum((a["score"] - b["score"]) * (a["paper_score"] - b["paper_score"]) > 0 for a, b in pairs)
    return agree, len(pairs)


def markdown_table(rows: Sequence[dict[str, Any]], title: str = "") -> str:
    """``results.md``: one row per configuration, then how the ordering compares with the paper's."""
    name = next((r["score_name"] for r in rows if r.get("score_name")), "score")
    head = ["variant", "configuration", name, "paper FID", "val loss", "passes", "images/s", "params (M)", "steps"]
    lines = [f"# {title}" if title else "# Ablation", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        label = r.get("label") or ""
        if r.get("same_as"):
            label += f" (same network as `{r['same_as']}`)"
        params = r["parameters"] / 1e6 if r.get("parameters") is not None else None
        lines.append("| " + " | ".join([
            f"`{r['variant']}`", label, _fmt(r.get("score")), _fmt(r.get("paper_score")), _fmt(r.get("val_loss"), 4),
            _fmt(r.get("forward_passes")), _fmt(r.get("images_per_s"), 1), _fmt(params, 3), _fmt(r.get("steps"))]) + " |")
    agreement = ordering_agreement(rows)
    if agreement:
        lines += ["", f"Ordering vs the paper (pairs of rows with a paper FID, distinct networks): "
                      f"{agreement[0]}/{agreement[1]} pairs agree."]
    return "\n".join(lines) + "\n"


def write_markdown(path: str | Path, rows: Sequence[dict[str, Any]], title: str = "") -> None:
    write_text(Path(path), markdown_table(rows, title))


def plot_score_vs_speed(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path | None:
    """Scatter of score (FID/FVD) against images/s, one labelled point per row; None when nothing to plot."""
    points = [r for r in rows if r.get("score") is not None and r.get("images_per_s") is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    for r in points:
        colour = "tab:gray" if r.get("mode") == "raster" else "tab:blue"
        ax.scatter(r["images_per_s"], r["score"], color=colour)
        ax.annotate(r["variant"], (r["images_per_s"], r["score"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    ax.set_xlabel("images/s (token generation, fast sampler)")
    ax.set_ylabel(f"{points[0].get('score_name') or 'score'} (lower is better)")
    ax.set_title("head configurations: quality vs speed")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def log_hparams(tb_dir: str | Path, row: dict[str, Any]) -> None:
    """One TensorBoard HParams run per variant under ``<tb_dir>/<variant>`` (compare them in the HPARAMS tab)."""
    from torch.utils.tensorboard import SummaryWriter

    hparams = {k: (row[k] if row.get(k) is not None else "") for k in
               ("variant", "mode", "head_sharing", "shared_axis", "head_blocks", "head_layout", "mixing")}
    metrics = {f"ablation/{k}": float(row[k]) for k in ("score", "val_loss", "forward_passes", "images_per_s",
                                                          "parameters") if row.get(k) is not None}
    writer = SummaryWriter(log_dir=str(Path(tb_dir) / row["variant"]))
    try:
        writer.add_hparams(hparams, metrics, run_name=".")
    finally:
        writer.close()
