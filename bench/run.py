"""`make bench`: measure every figure of DESIGN.md section 6 and write docs/benchmarks.md.

    .venv/bin/python -m bench.run                  # full sizes (a quiet machine: about 15-20 minutes)
    .venv/bin/python -m bench.run --quick          # small sizes: a smoke test of the harness
    .venv/bin/python -m bench.run --only upload,small --sizes upload=30,300

Each run uses its own topic prefix, PostgreSQL database, Milvus collection and chunk store (under
.stack/bench/), starts the service processes it needs, and stops them, deletes its topics and
drops its database and collection even when it fails.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import sys
import time

from bench import env as bench_env
from bench import report
from services.core.config import Settings

FIGURES = list(report.FIGURES)  # codec, upload, vector, large, small, stack, embedding, scans, fanout, ocr


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test, development)")
    parser.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--sizes", action="append", default=[], metavar="FIGURE=N,N",
                        help="override sizes: upload=MiB,..., vector=pages,..., small=documents")
    args = parser.parse_args(argv)
    try:
        args.sizes = {k: [int(n) for n in v.split(",")] for k, v in (item.split("=", 1) for item in args.sizes)}
    except ValueError:
        parser.error("--sizes takes FIGURE=N[,N...], e.g. upload=30,300")
    if set(args.sizes) - {"upload", "vector", "small"}:
        parser.error("--sizes applies to upload, vector and small")
    args.only = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(args.only) - set(FIGURES)
    if unknown:
        parser.error(f"unknown figures: {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    env = bench_env.configure()  # before anything imports services.core.topics
    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(name)s %(message)s")  # e.g. retries
    atexit.register(env.clean)
    run = bench_env.Run(env, args.quick, " ".join([".venv/bin/python -m bench.run", *argv]), args.sizes)
    from bench import isolation  # imports services.core.topics: only after configure()

    settings = Settings()
    failed = []
    try:
        isolation.create(settings)
        for key in [f for f in FIGURES if f in args.only]:
            print(f"== {report.FIGURES[key][0]}", flush=True)
            started = time.monotonic()
            try:
                section = importlib.import_module(f"bench.{key}").run(run)
            except Exception as e:  # the next figures still run; the old result stays in the doc
                print(f"  FAILED: {type(e).__name__}: {e}", flush=True)
                failed.append(key)
                continue
            section.duration_s = time.monotonic() - started
            section.save()
            print(section.markdown(), flush=True)
    finally:
        isolation.remove(settings)
    report.write()
    print(f"wrote {report.DOC.relative_to(report.REPO_ROOT)}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
