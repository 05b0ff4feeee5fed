"""``nar data verify``: read every shard and decode every field; report problems instead of raising.

Accepts a dataset folder (with ``meta.json``, whose shards may be URLs or ``pipe:`` commands), a folder of
``.tar`` shards, or one ``.tar`` file.
Checks: shards listed in ``meta.json`` exist and hold the counted samples; every field decodes
(images, ``.npy`` arrays, JSON, UTF-8 text); every sample matches ``meta.json`` with the same checks
the readers apply (:class:`~nar.data.checks.SampleSpec`: classes within ``classes``, token arrays
``[A, *grid]`` with ids below ``codebook_size``, clips of ``frames`` frames, fixed image sizes); and
measures the decode throughput.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from nar.data import transforms as T
from nar.data.checks import SampleSpec, sample_name, skip_reason
from nar.data.shards import (
    META_NAME,
    BadInputLog,
    ShardLocation,
    expand_specs,
    iter_tar,
    read_meta,
    shard_location,
)
from nar.errors import DataError
from nar.locks import read_lock

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SplitReport:
    split: str
    shards: int = 0
    expected: int | None = None
    samples: int = 0
    bad_samples: int = 0
    bad_shards: int = 0
    seconds: float = 0.0

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


@dataclasses.dataclass
class VerifyReport:
    path: str
    kind: str | None
    splits: dict[str, SplitReport]
    bad: BadInputLog
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems and self.bad.total == 0

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.splits.values())

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.splits.values())


def decode_fields(raw: dict[str, Any], spec: SampleSpec | None = None) -> None:
    """Decode every field of one raw sample and check it against ``spec`` (from ``meta.json``); raises on
    the first field that does not decode (:class:`DataError`) or contradicts the spec
    (:class:`~nar.data.checks.InvalidSample`)."""
    spec = spec or SampleSpec()
    name = sample_name(raw)
    payload = [k for k in raw if not k.startswith("__")]
    if not payload:
        raise DataError(f"{name}: sample has no fields")
    spec.label(raw, name)  # also when ``cls`` is missing: a labelled dataset needs it
    for ext in payload:
        data = raw[ext]
        last = ext.rsplit(".", 1)[-1]
        if last in ("png", "jpg", "jpeg", "webp"):
            spec.image(T.decode_image(data, name=f"{name}.{ext}"), name)
        elif last == "npy":
            arr = np.load(io.BytesIO(data), allow_pickle=False)
            if ext == "frames.npy":
                spec.frames_array(arr, name)
            elif ext == "tokens.npy":
                spec.tokens(arr, name)
        elif last == "json":
            json.loads(data)
        elif last == "txt":
            data.decode("utf-8")


def meta_problems(meta: dict[str, Any], root: Path) -> list[str]:
    """What ``meta.json`` itself lacks for its kind (a token dataset without ``grid`` trains unchecked)."""
    if meta.get("kind") != "tokens":
        return []
    return [f"{root / META_NAME}: a token dataset needs '{key}'" for key in ("grid", "codebook_size") if not meta.get(key)]


def verify(path: str | Path, *, decode: bool = True, limit: int | None = None) -> VerifyReport:
    """Check the shards under ``path`` (dataset folder, shard folder or one ``.tar``); never raises on bad data.

    ``limit`` stops each split after that many samples (a quick check and throughput estimate).
    """
    path = Path(path)
    bad = BadInputLog()
    problems: list[str] = []
    kind, spec = None, SampleSpec()
    plan: dict[str, list[tuple[ShardLocation, int | None]]] = {}
    holder = read_lock(path) if path.is_dir() else None
    if holder is not None:  # a writer at work: what is there now is not the finished dataset
        problems.append(f"{path} is being written (locked by pid {holder.get('pid')} on {holder.get('host')}, "
                        f"`{holder.get('command', '?')}`); verify it once that writer has finished")
    if path.is_dir() and (path / META_NAME).is_file():
        try:
            meta = read_meta(path)
        except DataError as err:
            return VerifyReport(str(path), None, {}, bad, [*problems, str(err)])
        kind, spec = meta.get("kind"), SampleSpec.from_meta(meta)
        problems += meta_problems(meta, path)
        for split, info in meta["splits"].items():
            shards = [shard_location(path, s) for s in expand_specs(info["shards"])]
            counts = info.get("shard_samples", [None] * len(shards))
            plan[split] = list(zip(shards, counts))
    elif path.is_dir():
        tars = sorted(path.rglob("*.tar"))
        if not tars:
            return VerifyReport(str(path), None, {}, bad, [*problems, f"{path}: no meta.json and no .tar shards"])
        for t in tars:
            plan.setdefault(t.parent.name, []).append((t, None))
    elif path.is_file():
        plan[path.stem] = [(path, None)]
    else:
        return VerifyReport(str(path), None, {}, bad, [f"{path}: not found"])

    reports: dict[str, SplitReport] = {}
    for split, shards in plan.items():
        rep = SplitReport(split, shards=len(shards))
        known = [c for _, c in shards if c is not None]
        rep.expected = int(sum(known)) if len(known) == len(shards) else None
        start = time.perf_counter()
        for shard, expected in shards:
            if limit is not None and rep.samples >= limit:
                break
            if isinstance(shard, Path) and not shard.is_file():
                problems.append(f"{shard}: listed in meta.json but missing")
                rep.bad_shards += 1
                continue
            unreadable_before = bad.counts["unreadable shard"]
            n = 0
            for raw in iter_tar(shard, bad):
                n += 1
                if decode:
                    try:
                        decode_fields(raw, spec)
                    except Exception as err:  # noqa: BLE001 — report, keep checking
                        bad.record(sample_name(raw), skip_reason(err))
                        rep.bad_samples += 1
                        continue
                rep.samples += 1
                if limit is not None and rep.samples >= limit:
                    break
            if bad.counts["unreadable shard"] > unreadable_before:
                rep.bad_shards += 1
            if expected is not None and n != expected and (limit is None or rep.samples < limit):
                problems.append(f"{shard}: holds {n} samples, meta.json says {expected}")
        rep.seconds = time.perf_counter() - start
        reports[split] = rep
    for split, rep in reports.items():
        log.info("verify %s/%s: %d samples (%s expected), %d bad samples, %d bad shards, %.0f samples/s",
                 path, split, rep.samples, rep.expected if rep.expected is not None else "?", rep.bad_samples,
                 rep.bad_shards, rep.samples_per_s)
    if bad.total or problems:
        log.warning("verify %s: %s; %d other problems", path, bad.summary(), len(problems))
    return VerifyReport(str(path), kind, reports, bad, problems)
