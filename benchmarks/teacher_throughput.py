"""Teacher throughput against a local fake OpenAI-compatible server with a fixed per-request latency.

Starts tests/fake_openai_server.FakeOpenAI on 127.0.0.1 with `--latency` seconds per request, then asks
`--requests` distinct CoT prompts through the full engine (cache writes, validation, progress bar) at
1, 4 and 16 requests in flight, each time with a fresh cache. Prints requests/second and the speed-up
over one in flight; the ideal is `in_flight / latency` requests per second.

    .venv/bin/python benchmarks/teacher_throughput.py [--latency 0.2] [--requests 64] [--in-flight 1 4 16]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.params import TeacherParams  # noqa: E402
from lib.questions import MCQuestion
from lib.teacher import cot_rationales, make_teacher  # noqa: E402
from tests.fake_openai_server import FakeOpenAI  # noqa: E402


def main() -> None:
    """Measure and print the throughput table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the server waits before each answer")
    ap.add_argument("--requests", type=int, default=64, help="distinct requests per measurement")
    ap.add_argument("--in-flight", type=int, nargs="+", default=[1, 4, 16])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ["BENCH_TEACHER_KEY"] = "sk-bench"
    server = FakeOpenAI(latency_s=args.latency, key="sk-bench").start()
    print(f"fake server latency {args.latency:.3f} s/request, {args.requests} requests per run, {os.cpu_count()} CPUs")
    print(f"{'in flight':>9} {'wall s':>8} {'req/s':>8} {'ideal req/s':>11} {'speed-up':>8}")
    base = None
    try:
        for k in args.in_flight:
            qs = [MCQuestion(id=f"b{k}-{i}", question=f"Which thing {k}-{i}?", choices=["x", "y"], labels=["A", "B"],
                             answer=0) for i in range(args.requests)]
            p = TeacherParams(backend="openai", base_url=server.url, model="fake", api_key_env="BENCH_TEACHER_KEY",
                              n_shots=1, max_new_tokens=32, max_in_flight=k, request_timeout_s=30)
            with tempfile.TemporaryDirectory() as run_dir:
                engine = make_teacher(p, run_dir=run_dir)
                t0 = time.perf_counter()
                rows = cot_rationales({"train": qs}, p, engine=engine)
                wall = time.perf_counter() - t0
                engine.close()
            assert all(r.failure is None for r in rows)
            rate = args.requests / wall
            base = base or rate
            print(f"{k:>9} {wall:>8.2f} {rate:>8.1f} {(k / args.latency if args.latency else float('inf')):>11.1f} {rate / base:>8.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
