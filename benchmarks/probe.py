"""A project-path step in its own process, driven one step at a time over stdin.

Settings that torch reads once at start-up (``THP_MEM_ALLOC_ENABLE``) can only be compared
across processes: the parent starts one probe per setting and alternates their steps, so both
see the same machine load. Protocol: the probe prints ``PROBE ready``; each ``step`` line it
reads runs one step and answers ``PROBE {"wall": s, "cpu": s}``; anything else ends it.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from benchmarks import suite
from benchmarks.measure import PROBE_MARK as MARK
from benchmarks.measure import timed


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=int, default=suite.HEADLINE_RES)
    parser.add_argument("--threads", type=int, default=0)
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    device = torch.device("cpu")
    shared = suite.build_shared(device)
    g = suite.build_generator(options.resolution, device)
    w_source = suite.start_from_seed(g, suite.SEED)
    runner = suite.project_runner(g, shared, w_source, suite.project_config(options.resolution))
    print(f"{MARK} ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        wall, cpu, _ = timed(runner.step, device)
        print(f"{MARK} " + json.dumps({"wall": wall, "cpu": cpu}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
