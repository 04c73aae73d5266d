"""Outputs of ``knowtune annotate``: the output-dir guard, exports, summary and shard merge.

An output directory holds the results of exactly one (protocol, model) pair:
``protocol.json``, ``config.yaml``, ``annotations.sqlite``, ``annotations.jsonl``,
``annotations.parquet`` (both loadable with ``datasets``) and ``summary.json`` (category
counts and shares overall and per relation, SliCK categories of Gekhman et al., EMNLP
2024, arXiv 2405.05904). Every file is written atomically.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from knowtune.errors import KnowtuneError
from knowtune.io import atomic_write_bytes, atomic_write_json, atomic_write_jsonl
from knowtune.provenance import provenance
from knowtune.slick.categories import CATEGORIES, KNOWN
from knowtune.slick.store import AnnotationStore, StoredRow

OUTPUT_FILES = ("protocol.json", "config.yaml", "annotations.jsonl", "annotations.parquet", "summary.json")
_SQLITE_FILES = ("annotations.sqlite", "annotations.sqlite-wal", "annotations.sqlite-shm")


def check_out_dir(out: Path, phash: str, fingerprint: str, protocol: dict[str, Any], *, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, clear) an output dir holding another protocol's or model's results."""
    existing = out / "protocol.json"
    if not existing.exists():
        if (out / "annotations.sqlite").exists():
            with AnnotationStore(out / "annotations.sqlite") as store:
                foreign = store.keys() - {(fingerprint, phash)}
            if foreign and not overwrite:
                raise KnowtuneError(f"{out}: annotations.sqlite holds results of another protocol or model",
                                    fix=f"pass a new --out directory, or --overwrite to discard the results in {out}")
            if foreign:
                _clear(out)
        return
    saved = json.loads(existing.read_text(encoding="utf-8"))
    if saved.get("protocol_hash") == phash and saved.get("model_fingerprint") == fingerprint:
        return
    if overwrite:
        _clear(out)
        return
    what = []
    if saved.get("model_fingerprint") != fingerprint:
        what.append(f"model fingerprint {saved.get('model_fingerprint')} there, {fingerprint} now")
    if saved.get("protocol_hash") != phash:
        old = saved.get("protocol", {})
        keys = sorted(k for k in set(old) | set(protocol) if old.get(k) != protocol.get(k))
        what.append(f"protocol {saved.get('protocol_hash')} there, {phash} now (differs in: {', '.join(keys)})")
    raise KnowtuneError(f"{out} holds results of another protocol or model: " + "; ".join(what),
                        fix=f"pass a new --out directory, rerun with the settings of {existing}, or add --overwrite to discard them")


def _clear(out: Path) -> None:
    for name in (*OUTPUT_FILES, *_SQLITE_FILES):
        (out / name).unlink(missing_ok=True)


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts and shares per category, overall and per relation, plus generations spent."""
    def block(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        counts = Counter(r["category"] for r in items)
        n = len(items)
        return {
            "examples": n,
            "counts": {c: counts[c] for c in CATEGORIES},
            "shares": {c: (counts[c] / n if n else 0.0) for c in CATEGORIES},
            "known_share": (sum(counts[c] for c in KNOWN) / n if n else 0.0),
            "generations": sum(r["generations"] for r in items),
        }

    by_relation: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_relation.setdefault(record["relation"], []).append(record)
    return {"overall": block(records), "per_relation": {r: block(by_relation[r]) for r in sorted(by_relation)}}


def parquet_bytes(records: Sequence[dict[str, Any]]) -> bytes:
    """The records as one Parquet file (``datasets.load_dataset("parquet", ...)`` reads it back)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(list(records)), buffer)
    return buffer.getvalue()


def write_outputs(out: Path, rows: Sequence[StoredRow], phash: str, fingerprint: str, config: dict[str, Any] | None,
                  seed: int | None, run_info: dict[str, Any]) -> dict[str, Any]:
    """Write ``annotations.jsonl``, ``annotations.parquet`` and ``summary.json``; return the summary."""
    records = [r.record for r in rows]
    atomic_write_jsonl(out / "annotations.jsonl", records)
    if records:
        atomic_write_bytes(out / "annotations.parquet", parquet_bytes(records))
    summary = summarize(records)
    summary["complete"] = run_info.get("expected") in (None, len(records))
    summary["protocol_hash"] = phash
    summary["provenance"] = provenance(config, seed=seed, model_fingerprint=fingerprint, protocol_hash=phash, run=run_info)
    atomic_write_json(out / "summary.json", summary)
    return summary


def merge_shards(shard_dirs: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Join the outputs of ``--shard i/N`` runs into one output dir equal to a single run's."""
    out = Path(out)
    if not shard_dirs:
        raise KnowtuneError("merge needs at least one shard directory", fix="knowtune annotate merge SHARD_DIR... --out DIR")
    headers, metas = [], []
    for d in map(Path, shard_dirs):
        if not (d / "protocol.json").exists() or not (d / "annotations.sqlite").exists():
            raise KnowtuneError(f"{d}: not an annotate output directory (protocol.json or annotations.sqlite missing)",
                                fix="pass the --out directories of the shard runs")
        headers.append(json.loads((d / "protocol.json").read_text(encoding="utf-8")))
        with AnnotationStore(d / "annotations.sqlite") as store:
            metas.append(store.meta())
    keys = {(h["protocol_hash"], h["model_fingerprint"]) for h in headers}
    if len(keys) != 1:
        raise KnowtuneError(f"the shards were made under different protocols or models: {sorted(keys)}",
                            fix="merge only shards of one command that differ in --shard alone")
    phash, fingerprint = keys.pop()
    _check_shards(shard_dirs, metas)
    rows: dict[str, StoredRow] = {}
    for d, meta in zip(map(Path, shard_dirs), metas):
        with AnnotationStore(d / "annotations.sqlite") as store:
            found = store.rows(fingerprint, phash)
        if len(found) < meta.get("expected", 0):
            raise KnowtuneError(f"{d}: shard {meta.get('shard')} is incomplete ({len(found)} of {meta['expected']} examples)",
                                fix="rerun that shard's command (it resumes), then merge again")
        rows.update({r.example_id: r for r in found})
    merged = sorted(rows.values(), key=lambda r: (r.position, r.example_id))
    check_out_dir(out, phash, fingerprint, headers[0]["protocol"], overwrite=False)
    atomic_write_json(out / "protocol.json", headers[0])
    _merged_config(Path(shard_dirs[0]), out)
    with AnnotationStore(out / "annotations.sqlite") as store:
        store.put(fingerprint, phash, merged)
        store.set_meta({"shard": None, "expected": len(merged), "merged_from": [str(d) for d in shard_dirs]})
    run_info = {"merged_from": [str(d) for d in shard_dirs], "expected": len(merged)}
    return write_outputs(out, merged, phash, fingerprint, None, headers[0]["protocol"].get("seed"), run_info)


def _merged_config(shard_dir: Path, out: Path) -> None:
    """``config.yaml`` of the merged dir: the first shard's, with ``shard`` cleared."""
    import yaml

    from knowtune.io import atomic_write_text

    source = shard_dir / "config.yaml"
    if source.exists():
        values = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
        values.update({"shard": None, "out": str(out)})
        atomic_write_text(out / "config.yaml", yaml.safe_dump(values, sort_keys=False))


def _check_shards(shard_dirs: Sequence[str | Path], metas: Sequence[dict[str, Any]]) -> None:
    """Every shard i/N of one N present exactly once (unsharded dirs may be merged freely)."""
    specs = [m.get("shard") for m in metas]
    if all(s is None for s in specs):
        return
    if any(s is None for s in specs):
        raise KnowtuneError("some directories are shards and some are not", fix="merge the shard directories of one sharded run only")
    counts = {s.split("/")[1] for s in specs}
    indices = sorted(int(s.split("/")[0]) for s in specs)
    if len(counts) != 1 or indices != list(range(int(counts.pop()))):
        raise KnowtuneError(f"the shards do not form one complete set: got {sorted(specs)}",
                            fix="pass every shard 0/N .. N-1/N of the same N, each once")
