"""Could a pretrained model be the embedded default? Every check docs/world.md's reading tables use, in one run.

    python benchmarks/candidate.py --model DIR --out WORK [--baseline default] [--methods]

For each model (the candidate, and with ``--baseline`` the model to compare it with, checked the same way in
the same run) it runs, into ``WORK/<label>/`` (a step whose output is there is not run again):

* ``benchmarks/reading.py --limit 300``: does it read? (closed-book / k=1 / k=2 exact match on never-seen
  facts, fresh reading lessons in instruction and ``Q:``/``A:`` form);
* ``knowtune annotate`` of the 900-fact audit sample (``benchmarks/maybeknown.py --write-sample``), then
  ``knowtune models exposure-check``: the SliCK category shares and rho(exposure, category), overall and
  without the facts whose answer stands in the question (the issue's bar: rho >= 0.86 and, for the paper's
  Table 2, at least 15% MaybeKnown);
* ``knowtune study --config src/knowtune/study/demo.yaml --model DIR``: the five demo findings and the
  in-distribution linear model (b_kn, b_unk, R^2);
* with ``--methods``, ``knowtune study --config src/knowtune/study/methods.yaml --model DIR``: the method
  comparison's findings (about 12 minutes more per model on 2 cores).

It prints one table of these figures with a column per model, then every finding that holds on the baseline
but not on the candidate, and writes the figures to ``WORK/candidate.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CATEGORIES = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")
VERDICTS = {True: "holds", False: "fails", None: "untested"}


def _run(command: list[str], done: Path, log: Path) -> None:
    """Run ``command`` unless ``done`` exists; its output goes to ``log``, and a failure stops the benchmark."""
    if done.exists():
        return
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as handle:
        code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if code != 0:
        sys.exit(f"failed (exit {code}): {' '.join(command)}; see {log}")
    print(f"  {time.perf_counter() - started:.0f} s", flush=True)


def reading(model: str, work: Path) -> dict[str, float]:
    """The last line of ``benchmarks/reading.py --limit 300`` as numbers."""
    log = work / "reading.txt"
    if not log.is_file() or "heldout=" not in log.read_text(encoding="utf-8"):
        log.unlink(missing_ok=True)
        _run([sys.executable, "benchmarks/reading.py", "--model", model, "--limit", "300"], log, work / "reading.partial")
        (work / "reading.partial").rename(log)
    last = [line for line in log.read_text(encoding="utf-8").splitlines() if line.startswith("heldout=")][-1]
    return {key: float(value) for key, value in (item.split("=") for item in last.split())}


def audit(model: str, work: Path, sample: Path) -> dict[str, float | None]:
    """Category shares and rho(exposure, category) of the 900-fact audit sample."""
    annotations, check = work / "audit", work / "exposure.json"
    summary = annotations / "summary.json"
    complete = summary.is_file() and json.loads(summary.read_text(encoding="utf-8")).get("complete") is True
    _run([str(BIN / "knowtune"), "annotate", "--model", model, "--data", str(sample), "--split", "train", "--out", str(annotations)],
         summary if complete else annotations / "not-complete", work / "annotate.log")  # an unfinished audit resumes
    _run([str(BIN / "knowtune"), "models", "exposure-check", "--annotations", str(annotations), "--model", model, "--out", str(check)],
         check, work / "exposure.log")
    result = json.loads(check.read_text(encoding="utf-8"))
    facts = sum(row["facts"] for row in result["per_category"].values())
    return {"rho": result["spearman_exposure_category"], "rho_not_inferable": result["spearman_exposure_category_not_inferable"],
            **{category: result["per_category"][category]["facts"] / facts for category in CATEGORIES}}


def study(model: str, work: Path, config: str) -> tuple[dict[str, float | None], dict[str, dict]]:
    """The study's in-distribution linear model and its findings (name -> {holds, value})."""
    out = work / Path(config).stem
    _run([str(BIN / "knowtune"), "study", "--config", config, "--model", model, "--out", str(out)], out / "analysis.json", work / f"{out.name}.log")
    analysis = json.loads((out / "analysis.json").read_text(encoding="utf-8"))
    linear = analysis["linear_model"]["in_distribution"]
    return ({key: linear.get(key) for key in ("b_kn", "b_unk", "r2")},
            {f["name"]: {"holds": f["holds"], "value": f["value"]} for f in analysis["findings"]})


def merge_findings(demo: dict[str, dict], methods: dict[str, dict]) -> dict[str, dict]:
    """The demo's findings plus the methods study's others: the methods study also judges some demo findings on its
    one mixture (or leaves them untested there), and the demo's verdicts on all its mixtures stand."""
    return {**methods, **demo}


def check(spec: str, work: Path, sample: Path, methods: bool) -> dict:
    from knowtune.models import fingerprint_of, model_dir_of

    model = str(model_dir_of(spec).resolve())  # `default` or a relative path, as the subprocesses in ROOT need it
    work.mkdir(parents=True, exist_ok=True)
    figures = {"model": model, "model_fingerprint": fingerprint_of(model), "reading": reading(model, work), "audit": audit(model, work, sample)}
    figures["linear_model"], figures["findings"] = study(model, work, "src/knowtune/study/demo.yaml")
    if methods:
        figures["findings"] = merge_findings(figures["findings"], study(model, work, "src/knowtune/study/methods.yaml")[1])
    return figures


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(results: dict[str, dict]) -> None:
    labels = list(results)
    rows = [("reads: closed / k=1 / k=2", lambda r: " / ".join(_fmt(r["reading"][k]) for k in ("closed_em", "k1_em", "k2_em"))),
            ("fresh lessons: instruction / Q:A:", lambda r: " / ".join(_fmt(r["reading"][k]) for k in ("fresh_lesson_em", "fresh_qa_lesson_em"))),
            ("rho: all / answer not in question", lambda r: f"{_fmt(r['audit']['rho'])} / {_fmt(r['audit']['rho_not_inferable'])}"),
            ("HK / MK / WK / Unknown %", lambda r: " / ".join(_fmt(100 * r["audit"][c], 1) for c in CATEGORIES)),
            ("b_kn / b_unk / R^2", lambda r: " / ".join(_fmt(r["linear_model"][k], 2) for k in ("b_kn", "b_unk", "r2")))]
    names = sorted({name for r in results.values() for name in r["findings"]})
    for name in names:
        rows.append((name, lambda r, name=name: "-" if name not in r["findings"] else
                     f"{VERDICTS[r['findings'][name]['holds']]} ({_fmt(r['findings'][name]['value'], 2)})"))
    width = max(len(label) for label, _ in rows)
    print(f"{'':<{width}}  " + "  ".join(f"{label:<28}" for label in labels))
    for label, cell in rows:
        print(f"{label:<{width}}  " + "  ".join(f"{cell(results[m]):<28}" for m in labels))


def lost_findings(results: dict[str, dict]) -> list[str]:
    """The findings that hold on the baseline but not (or untested) on the candidate."""
    candidate = results["candidate"]["findings"]
    return [name for name, f in results["baseline"]["findings"].items() if f["holds"] and not candidate.get(name, {}).get("holds")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the candidate: a model directory knowtune pretrained")
    parser.add_argument("--out", type=Path, required=True, help="work directory (resumable)")
    parser.add_argument("--baseline", help="a model to check the same way in the same run, e.g. `default`")
    parser.add_argument("--methods", action="store_true", help="also run the method comparison demo (methods.yaml)")
    args = parser.parse_args()
    from knowtune.io import atomic_write_json
    from knowtune.provenance import provenance

    args.out.mkdir(parents=True, exist_ok=True)
    sample = args.out / "audit900.jsonl"
    _run([sys.executable, "benchmarks/maybeknown.py", "--write-sample", str(sample)], sample, args.out / "sample.log")
    models = {"candidate": args.model, **({"baseline": args.baseline} if args.baseline else {})}
    results = {label: check(model, args.out / label, sample, args.methods) for label, model in models.items()}
    atomic_write_json(args.out / "candidate.json", {**results, "provenance": provenance(vars(args) | {"out": str(args.out)})})
    print_table(results)
    if args.baseline:
        print("findings that hold on the baseline but not on the candidate: " + (", ".join(lost_findings(results)) or "none"))


if __name__ == "__main__":
    main()
