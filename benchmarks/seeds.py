"""How a study's findings move with the seed: ``knowtune study`` at several seeds, then one table.

    python benchmarks/seeds.py --config CONFIG --model MODEL --seeds 0,1,2 --out WORK [study flags ...]

Each seed S runs ``knowtune study --config CONFIG --model MODEL --seed S --out WORK/seed-S`` plus any further
flags, which go to ``knowtune study`` as they are (``--compare-methods-methods sft,filtered,selfdistill``).
The study's ``seed`` decides the audited sample, the mixtures and every training run, so each seed is the
whole protocol again on the same model. A seed whose study has an ``analysis.json`` is read as it is; an
unfinished one resumes.

It prints one row per finding: each seed's verdict and value, in how many seeds it holds, and the mean and
sample standard deviation of its value. It does not judge a finding over seeds: the finding's own test is
applied to each seed, as ``knowtune study`` applies it. ``WORK/seeds.json`` holds the same, with provenance.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from candidate import BIN, VERDICTS, _run  # noqa: E402 - benchmarks/ is not a package


#: The ``knowtune study`` flag the script sets for each seed: passed through as well, it would override the script's.
SEED_FLAG = "--seed"


def run_seed(config: str, model: str, seed: int, work: Path, flags: list[str]) -> list[dict]:
    """The findings of the study at ``seed`` (run into ``work/seed-<seed>`` unless finished there)."""
    out = work / f"seed-{seed}"
    work.mkdir(parents=True, exist_ok=True)
    command = [str(BIN / "knowtune"), "study", "--config", config, "--model", model, "--seed", str(seed), "--out", str(out), *flags]
    _run(command, out / "analysis.json", work / f"seed-{seed}.log")
    return json.loads((out / "analysis.json").read_text(encoding="utf-8"))["findings"]


def across_seeds(findings: dict[int, list[dict]]) -> list[dict]:
    """One record per finding (in the order they first appear): per seed ``holds`` and ``value``, how many seeds it holds
    in of those that tested it, and the mean and sample standard deviation of its values."""
    names = list(dict.fromkeys(f["name"] for seed in findings for f in findings[seed]))
    rows = []
    for name in names:
        per_seed = {seed: next((f for f in found if f["name"] == name), None) for seed, found in findings.items()}
        verdicts = {seed: {"holds": f["holds"], "value": f["value"]} if f else {"holds": None, "value": None} for seed, f in per_seed.items()}
        tested = [v for v in verdicts.values() if v["holds"] is not None]
        values = [v["value"] for v in tested if v["value"] is not None]
        rows.append({"name": name, "seeds": verdicts, "holds_in": sum(v["holds"] for v in tested), "tested_in": len(tested),
                     "mean": statistics.mean(values) if values else None, "sd": statistics.stdev(values) if len(values) > 1 else None})
    return rows


def print_table(rows: list[dict], seeds: list[int]) -> None:
    def cell(verdict: dict) -> str:
        value = "-" if verdict["value"] is None else f"{verdict['value']:.2f}"
        return f"{VERDICTS[verdict['holds']]} ({value})"

    def spread(row: dict) -> str:
        if row["mean"] is None:
            return "-"
        return f"{row['mean']:.2f}" + ("" if row["sd"] is None else f" +- {row['sd']:.2f}")

    width = max([len("finding"), *(len(r["name"]) for r in rows)])
    print(f"{'finding':<{width}}  " + "  ".join(f"{f'seed {s}':<18}" for s in seeds) + "  holds in  value: mean +- sd")
    for row in rows:
        print(f"{row['name']:<{width}}  " + "  ".join(f"{cell(row['seeds'][s]):<18}" for s in seeds)
              + f"  {row['holds_in']} of {row['tested_in']:<3}  {spread(row)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)  # --seed is not --seeds
    parser.add_argument("--config", required=True, help="the study config, e.g. src/knowtune/study/methods.yaml")
    parser.add_argument("--model", default="default", help="the model (default: the embedded default)")
    parser.add_argument("--seeds", required=True, help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument("--out", type=Path, required=True, help="work directory (resumable): one study per seed")
    args, flags = parser.parse_known_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds: give comma-separated integers, e.g. 0,1,2 (got {args.seeds!r})")
    if not seeds or len(set(seeds)) != len(seeds):
        parser.error(f"--seeds: give distinct seeds, e.g. 0,1,2 (got {args.seeds!r})")
    if any(flag.split("=")[0] == SEED_FLAG for flag in flags):
        parser.error(f"{SEED_FLAG}: this script sets each study's seed itself; give the seeds with --seeds, e.g. --seeds 0,1,2")
    from knowtune.io import atomic_write_json
    from knowtune.provenance import provenance

    findings = {seed: run_seed(args.config, args.model, seed, args.out, flags) for seed in seeds}
    rows = across_seeds(findings)
    atomic_write_json(args.out / "seeds.json", {"findings": rows,
                                                "provenance": provenance(vars(args) | {"out": str(args.out), "study_flags": flags})})
    print_table(rows, seeds)


if __name__ == "__main__":
    main()
