"""The results of a grid: ``results.csv`` (written atomically, one complete row per run = variant × seed),
``results.md`` (each variant's mean and 95 % confidence interval over its seeds, and for every pair of rows the
paper orders whether ours agrees and whether the intervals separate), TensorBoard HParams, ``fid_vs_speed.png``
and ``learning_curves.png`` (bits/token against steps and against training seconds)."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nar.atomic import atomic_path, write_text

log = logging.getLogger(__name__)

# CSV columns, in order. ``score`` is FID (images) or FVD / its Inception proxy (video), named by ``score_name``.
COLUMNS = ("run", "variant", "seed", "label", "mode", "regions", "head_sharing", "shared_axis", "head_blocks",
           "head_layout", "mixing", "score_name", "score", "kid", "kid_std", "bits_per_token", "paper_score", "val_loss",
           "forward_passes", "images_per_s", "parameters", "steps", "train_seconds", "same_as", "fingerprint")
FLOATS = ("score", "kid", "kid_std", "bits_per_token", "paper_score", "val_loss", "images_per_s", "train_seconds")
INTS = ("seed", "shared_axis", "forward_passes", "parameters", "steps")


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
            row["run"] = row.get("run") or row["variant"]  # rows written before runs had seeds
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


@dataclasses.dataclass
class Estimate:
    """Mean of one quantity over a variant's seeds, with its 95 % confidence interval (Student's t)."""

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if self.n < 2:
            return _fmt(self.mean, 4)
        return f"{_fmt(self.mean, 4)} ± {_fmt(self.high - self.mean, 2)}"

    def separates(self, other: Estimate) -> bool:
        """The two intervals do not overlap (needs >= 2 seeds on each side)."""
        return self.n > 1 and other.n > 1 and (self.high < other.low or other.high < self.low)


def estimate(values: Sequence[float]) -> Estimate | None:
    """Mean and 95 % confidence interval of ``values`` (one per seed); None when there are none."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return Estimate(mean, mean, mean, 1)
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = float(t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))
    return Estimate(mean, mean - half, mean + half, len(values))


# The quantities summarised per variant: (row key, label, lower is better).
SUMMARISED = (("bits_per_token", "bits/token", True), ("score", "FID", True), ("kid", "KID", True))


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per variant (grid order): its first own row's description (a row reused from another run only when
    it has none) and an :class:`Estimate` per quantity.

    Each (variant, seed) counts once, its first row: a grid grown from one seed to several holds both ``a`` and
    ``a-s0`` (the same run, reused), which must not weigh seed 0 twice."""
    variants: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, int]] = set()
    for r in rows:
        key = (r["variant"], r.get("seed") or 0)
        if key not in seen:
            seen.add(key)
            variants.setdefault(r["variant"], []).append(r)
    out = []
    for group in variants.values():
        own = next((r for r in group if not r.get("same_as")), group[0])
        entry = {**own, "seeds": sorted(r.get("seed") or 0 for r in group)}
        for key, _, _ in SUMMARISED:
            entry[key] = estimate([r.get(key) for r in group])
        speeds = [r["images_per_s"] for r in group if r.get("images_per_s") is not None]
        entry["images_per_s"] = sum(speeds) / len(speeds) if speeds else None
        out.append(entry)
    return out


def paper_pairs(summary: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs ``(better, worse)`` of variants the paper orders (both have a paper FID; lower is better)."""
    scored = [v for v in summary if v.get("paper_score") is not None]
    pairs = []
    for i, a in enumerate(scored):
        for b in scored[i + 1:]:
            if a["paper_score"] != b["paper_score"]:
                pairs.append((a, b) if a["paper_score"] < b["paper_score"] else (b, a))
    return pairs


def ordering_agreement(rows: Sequence[dict[str, Any]]) -> tuple[int, int] | None:
    """Pairs the paper orders that our mean score orders the same way: ``(agreeing, total)``; None when none."""
    pairs = [(a, b) for a, b in paper_pairs(summarise(rows)) if a.get("score") and b.get("score")]
    if not pairs:
        return None
    return sum(a["score"].mean < b["score"].mean for a, b in pairs), len(pairs)


def markdown_table(rows: Sequence[dict[str, Any]], title: str = "", runs_root: str | Path | None = None,
                   missing: Sequence[tuple[str, Sequence[int]]] = ()) -> str:
    """``results.md``: what is not run yet (``missing``: ``(variant, seeds)`` without a row), the per-variant
    summary, the paper's orderings, NAR vs raster, then every run."""
    summary = summarise(rows)
    name = next((r["score_name"] for r in rows if r.get("score_name")), "score")
    seeds = max((len(v["seeds"]) for v in summary), default=0)
    lines = [f"# {title}" if title else "# Ablation", "",
             f"Mean ± half-width of the 95 % confidence interval over {seeds} training seed(s) (Student's t). "
             "bits/token is the exact negative log-likelihood of the sampler's own distribution (teacher-forced, "
             f"unguided) on the fixed validation set; {name} and KID are of the generated samples.", ""]
    if missing:
        absent = sum(len(s) for _, s in missing)
        lines += ["## Not run yet", "",
                  f"**Incomplete grid: {absent} of {absent + len(rows)} runs have no row yet** (`--only`, or a grid "
                  "stopped or still running). The tables below leave them out: a variant's mean is over the seeds "
                  "it has, and the paper's orderings skip pairs with a variant not run.", "",
                  "| variant | seeds without a row |", "|---|---|"]
        lines += [f"| `{variant}` | {', '.join(map(str, s))} |" for variant, s in missing]
        lines.append("")
    head = ["variant", "configuration", "passes", "bits/token", name, "KID × 1e3", "paper FID", "images/s", "seeds"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in summary:
        kid = v.get("kid")
        kid_text = str(Estimate(kid.mean * 1e3, kid.low * 1e3, kid.high * 1e3, kid.n)) if kid else "—"
        label = (v.get("label") or "") + (f" (same network as `{v['same_as']}`)" if v.get("same_as") else "")
        lines.append("| " + " | ".join([f"`{v['variant']}`", label, _fmt(v.get("forward_passes")),
                                           str(v["bits_per_token"] or "—"), str(v["score"] or "—"), kid_text,
                                           _fmt(v.get("paper_score")), _fmt(v.get("images_per_s"), 1),
                                           str(len(v["seeds"]))]) + " |")
    pairs = paper_pairs(summary)
    if pairs:
        lines += ["", "## The paper's orderings", "",
                  "Each pair the paper orders by FID (its better row first): does our mean order them the same way, "
                  "and do the confidence intervals separate?", "",
                  "| paper: better < worse | bits/token | " + name + " | KID |", "|---|---|---|---|"]
        for a, b in pairs:
            cells = []
            for key, _, _ in SUMMARISED:
                ea, eb = a.get(key), b.get(key)
                if not ea or not eb:
                    cells.append("—")
                    continue
                agree = "agrees" if ea.mean < eb.mean else "**reversed**"
                cells.append(f"{agree}, {'CIs separate' if ea.separates(eb) else 'CIs overlap'}")
            lines.append(f"| `{a['variant']}` ({_fmt(a['paper_score'])}) < `{b['variant']}` ({_fmt(b['paper_score'])}) | "
                         + " | ".join(cells) + " |")
    lines += nar_vs_raster(summary, rows, runs_root)
    lines += ["", "## Every run", "",
              "| run | bits/token | " + name + " | KID | val loss | passes | images/s | steps | train s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([f"`{r['run']}`" + (f" (= `{r['same_as']}`)" if r.get("same_as") else ""),
                                           _fmt(r.get("bits_per_token"), 4), _fmt(r.get("score")), _fmt(r.get("kid"), 4),
                                           _fmt(r.get("val_loss"), 4), _fmt(r.get("forward_passes")),
                                           _fmt(r.get("images_per_s"), 1), _fmt(r.get("steps")),
                                           _fmt(r.get("train_seconds"), 0)]) + " |")
    return "\n".join(lines) + "\n"


def nar_vs_raster(summary: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]],
                  runs_root: str | Path | None) -> list[str]:
    """The NAR-vs-raster comparison at equal steps: bits/token gap, passes, and where each curve ends."""
    by_name = {v["variant"]: v for v in summary}
    nar, raster = by_name.get("mixed"), by_name.get("raster")
    if not nar or not raster or not nar.get("bits_per_token") or not raster.get("bits_per_token"):
        return []
    bn, br = nar["bits_per_token"], raster["bits_per_token"]
    gap = (bn.mean - br.mean) / br.mean
    speed = raster["forward_passes"] / nar["forward_passes"] if nar.get("forward_passes") else float("nan")
    lines = ["", "## NAR (mixed) vs raster, same trunk, data and steps", "",
             f"- bits/token: NAR {bn} vs raster {br}: NAR is {100 * gap:+.2f} % "
             f"({'within' if abs(gap) <= 0.03 else 'NOT within'} 3 %), "
             f"CIs {'separate' if bn.separates(br) else 'overlap'}; {nar['forward_passes']} vs "
             f"{raster['forward_passes']} forward passes ({speed:.2f}x fewer)."]
    # Every NAR variant's learning curve against raster's, step by step (mean over seeds): the gap's trend.
    nar_variants = [v["variant"] for v in summary if v.get("mode") == "nar" and not v.get("same_as")]
    curves = ({n: mean_curve(rows, n, runs_root) for n in dict.fromkeys([*nar_variants, "mixed", "raster"])}
              if runs_root else {})
    if curves.get("mixed") and curves.get("raster"):
        end_nar, end_raster = curves["mixed"][-1], curves["raster"][-1]
        reach = next((step for step, _, bits in curves["raster"] if bits <= end_nar[2]), None)
        lines.append(f"- Where the curves end (step {end_nar[0]}): NAR {end_nar[2]:.4f} bits/token after "
                     f"{end_nar[1]:.0f} s of training, raster {end_raster[2]:.4f} after {end_raster[1]:.0f} s; "
                     + (f"raster first reached NAR's final value at step {reach}." if reach is not None
                        else "raster never reached NAR's final value." if end_raster[2] > end_nar[2]
                        else "NAR never reached raster's final value."))
    bits_at = {n: {step: bits for step, _, bits in curve} for n, curve in curves.items() if curve}
    shown = [n for n in nar_variants if n in bits_at]
    if "raster" in bits_at and shown:
        lines += ["", "Each NAR variant's bits/token relative to raster's at the same step (mean over seeds; "
                  "negative: NAR ahead):", "",
                  "| step | " + " | ".join(f"`{n}`" for n in shown) + " |", "|---" * (len(shown) + 1) + "|"]
        for step, raster_bits in sorted(bits_at["raster"].items()):
            cells = [bits_at[n].get(step) for n in shown]
            lines.append(f"| {step} | " + " | ".join("—" if b is None else f"{100 * (b / raster_bits - 1):+.2f} %"
                                                   for b in cells) + " |")
    return lines


def mean_curve(rows: Sequence[dict[str, Any]], variant: str, runs_root: str | Path | None
               ) -> list[tuple[int, float, float]]:
    """``[(step, train seconds, bits/token)]`` averaged over the variant's seeds (steps every seed reached)."""
    from nar.lightning.logs import read_metrics

    per_run = []
    for r in rows:
        if r["variant"] != variant or r.get("same_as") or runs_root is None:
            continue
        points = {int(m["step"]): (m.get("train_seconds", float("nan")), m["val/bits_per_token"])
                  for m in read_metrics(Path(runs_root) / r["run"]) if "val/bits_per_token" in m}
        if points:
            per_run.append(points)
    if not per_run:
        return []
    steps = sorted(set.intersection(*(set(p) for p in per_run)))
    return [(s, sum(p[s][0] for p in per_run) / len(per_run), sum(p[s][1] for p in per_run) / len(per_run))
            for s in steps]


def write_markdown(path: str | Path, rows: Sequence[dict[str, Any]], title: str = "",
                   runs_root: str | Path | None = None, missing: Sequence[tuple[str, Sequence[int]]] = ()) -> None:
    write_text(Path(path), markdown_table(rows, title, runs_root, missing))


def plot_learning_curves(path: str | Path, rows: Sequence[dict[str, Any]], runs_root: str | Path) -> Path | None:
    """bits/token against steps (left) and training seconds (right), one line per variant (mean over seeds)."""
    curves = {v: mean_curve(rows, v, runs_root) for v in dict.fromkeys(r["variant"] for r in rows)}
    curves = {v: c for v, c in curves.items() if c}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120, sharey=True)
    for variant, curve in curves.items():
        style = dict(lw=2.2 if variant in ("mixed", "raster") else 1.0,
                     color="black" if variant == "raster" else None, ls="--" if variant.startswith("par") else "-")
        by_step.plot([c[0] for c in curve], [c[2] for c in curve], label=variant, **style)
        by_time.plot([c[1] for c in curve], [c[2] for c in curve], label=variant, **style)
    by_step.set_xlabel("training step")
    by_time.set_xlabel("training seconds (validation excluded)")
    by_step.set_ylabel("val bits/token (exact NLL)")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    by_time.legend(fontsize=7)
    return _save_figure(fig, path)


def _save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out ``fig``, write it as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


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
    return _save_figure(fig, path)


def log_hparams(tb_dir: str | Path, row: dict[str, Any]) -> None:
    """One TensorBoard HParams run per variant under ``<tb_dir>/<variant>`` (compare them in the HPARAMS tab)."""
    from torch.utils.tensorboard import SummaryWriter

    hparams = {k: (row[k] if row.get(k) is not None else "") for k in
               ("variant", "mode", "head_sharing", "shared_axis", "head_blocks", "head_layout", "mixing")}
    metrics = {f"ablation/{k}": float(row[k]) for k in ("score", "kid", "bits_per_token", "val_loss", "forward_passes",
                                                          "images_per_s", "parameters") if row.get(k) is not None}
    writer = SummaryWriter(log_dir=str(Path(tb_dir) / row.get("run", row["variant"])))
    try:
        writer.add_hparams(hparams, metrics, run_name=".")
    finally:
        writer.close()
