"""Measure `nar demo`'s budget split: tokenizer steps against generator steps, at a fixed sample count.

    python experiments/demo/sweep.py --out runs/demo-sweep --results experiments/demo/results/sweep-<date>

Each setting runs the whole demo (`nar demo --domain emoji`, the same embedded data for all, built once and
timed) in its own folder, with `--tokenizer-steps T trainer.max_steps=G`; the wall time, FID, the tokenizer's
ceiling and bits/token of each go into `sweep.json` and `sweep.md` with the exact commands. The sample count
stays at the demo's 200 for every setting: FID at different sample counts is not comparable (its bias grows as
N shrinks), so the split is between the two trainings only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = [(200, 200), (200, 600), (400, 400), (150, 900), (300, 700)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo-sweep", help="working folder (one demo folder per setting)")
    p.add_argument("--results", required=True, help="folder for sweep.json / sweep.md")
    p.add_argument("--settings", nargs="*", default=[f"{t}:{g}" for t, g in SETTINGS],
                   help="TOKENIZER_STEPS:GENERATOR_STEPS pairs")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    out, results = Path(args.out), Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    nar = [sys.executable, "-m", "nar"]
    start = time.perf_counter()
    subprocess.run([*nar, "data", "embedded", "--only", "emoji", "--out", str(data)], check=True)
    data_seconds = time.perf_counter() - start
    earlier = results / "sweep.json"  # a later invocation adds settings to the same table
    rows = json.loads(earlier.read_text())["rows"] if earlier.is_file() else []
    done = {(r["tokenizer_steps"], r["generator_steps"]) for r in rows}
    for setting in args.settings:
        tok, gen = (int(x) for x in setting.split(":"))
        if (tok, gen) in done:
            print(f"{setting}: already in {earlier}", flush=True)
            continue
        folder = out / f"t{tok}-g{gen}"
        cmd = [*nar, "demo", "--domain", "emoji", "--data", str(data), "--out", str(folder), "--threads",
               str(args.threads), "--tokenizer-steps", str(tok), f"trainer.max_steps={gen}", f"trainer.val_every={gen}"]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"setting {setting} failed")
        result = json.loads((folder / "demo_result.json").read_text())
        scores = result["runs"]["nar"]["scores"]
        rows.append({"tokenizer_steps": tok, "generator_steps": gen, "seconds": seconds,
                     "seconds_with_data": seconds + data_seconds, "fid": scores.get("val/fid"),
                     "ceiling_fid": result["ceiling"].get("fid"), "bits_per_token": scores.get("val/bits_per_token"),
                     "timings": result["timings"], "command": " ".join(cmd[2:])})
        print(json.dumps(rows[-1]), flush=True)
        write_results(results, args, data_seconds, rows)  # after every setting: a stopped sweep keeps its rows
    return 0


def write_results(results: Path, args: argparse.Namespace, data_seconds: float, rows: list[dict]) -> None:
    settings = " ".join(f"{r['tokenizer_steps']}:{r['generator_steps']}" for r in rows)
    command = f"python experiments/demo/sweep.py --out {args.out} --results {args.results} --threads {args.threads}" \
              f" --settings {settings}"
    machine = f"{platform.machine()}, {os.cpu_count()} logical CPUs, {platform.platform()}"
    (results / "sweep.json").write_text(json.dumps({"command": command, "machine": machine,
                                                     "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                                                     "data_seconds": data_seconds, "rows": rows}, indent=1))
    lines = [f"# `nar demo` budget sweep (emoji, {args.threads} CPU threads)", "",
             f"`{command}` (settings may have been added by later invocations of the same command; each row's own "
             "command is in sweep.json)", "",
             f"Machine: {machine}. Embedded data built once in {data_seconds:.0f} s (`nar data embedded --only "
             "emoji`). Each row is one whole `nar demo` (its command in sweep.json): tokenizer, tokens, generator, "
             "200 samples, FID against 200 held-out images, the tokenizer's ceiling FID on the same real set.", "",
             "| tokenizer steps | generator steps | minutes (+ data) | FID (200) | tokenizer ceiling | bits/token |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tokenizer_steps']} | {r['generator_steps']} | {r['seconds'] / 60:.1f} "
                     f"({r['seconds_with_data'] / 60:.1f}) | {r['fid']:.1f} | {r['ceiling_fid']:.1f} | "
                     f"{r['bits_per_token']:.4f} |")
    (results / "sweep.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
