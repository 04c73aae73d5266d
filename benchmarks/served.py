"""Benchmark of the SliCK audit through a server (``--backend openai``) against the in-process backend.

The same examples (default: 200 train examples of the embedded world, taken round-robin over
the relations) are audited with the paper's protocol (Gekhman et al., EMNLP 2024,
arXiv 2405.05904, section 3: N_ex = 10 four-shot prompts, greedy + 16 samples at T = 0.5,
top-k 40; lazy mode) twice: in this process (``HFBackend``) and through an OpenAI-compatible
server. Without ``--base-url`` the server is llama.cpp's ``llama-server`` started here on
127.0.0.1 with the default model exported to GGUF (``--parallel`` slots, ``--threads``
threads; built into the cache first if needed, see docs/serving.md); with ``--base-url`` it
is any running server of the same model (vLLM on a GPU machine, say).

Reported: the share of (example, prompt) greedy answers that are identical, the share of
examples whose category is identical (samples come from different samplers, so WeaklyKnown
vs Unknown may differ), and the throughput ratio served / in-process (examples per second of
wall clock, each side end to end; the server's start-up is not counted). On a shared 2-core
machine the in-process side uses ``--threads`` torch threads, as many as the server.

Usage::

    python benchmarks/served.py                                   # llama-server, 200 examples
    python benchmarks/served.py --base-url http://gpu-host:8000/v1 --served-model MODEL

The last line reads ``greedy_agreement=<pct> category_agreement=<pct> served_vs_inprocess=<ratio>``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from annotate import agreement, benchmark_data  # noqa: E402  (the annotate benchmark's data and agreement helpers)

from knowtune.serving.llama import LlamaServer, build_llama_server, free_port, llama_server_command, model_gguf  # noqa: E402
from knowtune.slick.annotate import run_annotate  # noqa: E402
from knowtune.slick.protocol import AnnotateConfig  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model dir, hub id or `default` (in-process side, tokenizer of the served side)")
    parser.add_argument("--examples", type=int, default=200, help="audited train examples of the embedded world")
    parser.add_argument("--mode", choices=["lazy", "exact"], default="lazy")
    parser.add_argument("--base-url", action="append", default=None, help="use this running server (repeatable) instead of starting llama-server")
    parser.add_argument("--served-model", default=None, help="the served model's name (default: the one it lists)")
    parser.add_argument("--parallel", type=int, default=4, help="llama-server slots")
    parser.add_argument("--threads", type=int, default=1, help="llama-server threads and in-process torch threads (1: on a busy 2-core machine more threads stall in spin-waits)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per server")
    parser.add_argument("--out", default=None, help="keep both audits' outputs here (default: a temp dir)")
    return parser.parse_args()


def audit(config: AnnotateConfig, out: Path) -> tuple[float, dict]:
    """Wall seconds and records by id of one ``run_annotate`` into a fresh ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    run_annotate(config.model_copy(update={"out": str(out)}))
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "annotations.jsonl").read_text().splitlines()]
    return seconds, {r["id"]: r for r in records}


@contextlib.contextmanager
def served_urls(args, tmp: Path):
    """The base URLs to audit through: ``--base-url``, or a llama-server started here for the run."""
    if args.base_url:
        yield args.base_url
        return
    binary = build_llama_server(log=lambda line: print(line, flush=True))
    port = free_port()
    command = llama_server_command(binary, model_gguf(args.model), port=port, parallel=args.parallel, threads=args.threads, alias=args.model)
    with LlamaServer(command, host="127.0.0.1", port=port, log_path=tmp / "llama-server.log") as server:
        yield [server.base_url]


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="knowtune-served-"))
    out = Path(args.out) if args.out else tmp
    data = benchmark_data(None, "train", args.examples, "spread", tmp)
    config = AnnotateConfig(model=args.model, data=data, splits=["train"], device="cpu", mode=args.mode)
    print(f"model={args.model} examples={args.examples} mode={args.mode} threads={args.threads} parallel={args.parallel}", flush=True)
    run_annotate(config.model_copy(update={"limit": 2, "out": str(out / "warmup")}))  # imports and first-call costs untimed
    t_local, local = audit(config, out / "inprocess")
    print(f"in-process: {t_local:8.2f} s wall, {len(local) / t_local:.2f} examples/s", flush=True)
    with served_urls(args, tmp) as urls:
        served_config = config.model_copy(update={"backend": "openai", "base_url": urls, "served_model": args.served_model,
                                                  "concurrency": args.concurrency})
        t_served, served = audit(served_config, out / "served")
    print(f"served:     {t_served:8.2f} s wall, {len(served) / t_served:.2f} examples/s ({', '.join(urls)})", flush=True)
    greedy = agreement({i: r["greedy_answers"] for i, r in local.items()}, {i: r["greedy_answers"] for i, r in served.items()})
    categories = 100.0 * sum(local[i]["category"] == served[i]["category"] for i in local) / len(local)
    generations = sum(r["generations"] for r in local.values()), sum(r["generations"] for r in served.values())
    print(f"generations: in-process {generations[0]}, served {generations[1]}")
    print(f"greedy_agreement={greedy:.1f} category_agreement={categories:.1f} served_vs_inprocess={t_local / t_served:.2f}")


if __name__ == "__main__":
    main()
