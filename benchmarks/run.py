"""``make bench``: step time and memory, official path vs project, and the service under load.

Prints a table whose last line is ``step speedup vs official: N.NN×`` (256 px) and writes
``bench.json``. Sections run in order of importance inside a time budget (default 9 minutes);
whatever does not fit is skipped and says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THP_ENV = "THP_MEM_ALLOC_ENABLE"  # torch: back large CPU tensors with transparent huge pages


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", default="64,256,1024", help="comma-separated, px")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds at 64/256 px")
    parser.add_argument("--rounds-1024", type=int, default=2)
    parser.add_argument("--ablation-rounds", type=int, default=2)
    parser.add_argument("--batch-rounds", type=int, default=2)
    parser.add_argument("--op-rounds", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-time budget")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: default")
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated sections to leave out: quality, ablations, thp, batched, service, ops",
    )
    parser.add_argument(
        "--thp",
        action="store_true",
        help=f"set {THP_ENV}=1 (huge-page CPU allocations) for the whole run; the 'thp' "
        "section measures its effect either way",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    # torch reads this once, at its first allocation: it must be set before torch is imported.
    # Children (the service's worker and API) inherit it.
    if options.thp:
        os.environ[THP_ENV] = "1"
    thp = os.environ.get(THP_ENV) == "1"
    sys.path.insert(0, str(ROOT))
    from benchmarks import suite

    args = suite.Args(
        resolutions=tuple(int(r) for r in options.resolutions.split(",") if r),
        rounds=options.rounds,
        rounds_1024=options.rounds_1024,
        ablation_rounds=options.ablation_rounds,
        batch_rounds=options.batch_rounds,
        op_rounds=options.op_rounds,
        budget_s=options.budget_s,
        skip=frozenset(x for x in options.skip.split(",") if x),
        out=options.out,
        threads=options.threads,
        thp=thp,
    )
    report = suite.run(args)
    suite.save(report, args.out)
    print(f"wrote {args.out}")
    for line in suite.table(report):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
