"""The benchmark sections behind ``make bench`` (``benchmarks/run.py`` parses the options).

Models are the real architectures with seeded random weights (no pretrained weights can be had
offline): StyleGAN2 config-f at each resolution, CLIP ViT-B/32, the released audio encoder's
ResNet-18 layout and IR-SE50. Timings depend on shapes, not on weight values.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks import ops as op_bench
from benchmarks import service as service_bench
from benchmarks.measure import PROBE_MARK, PeakMemory, alternate, ratio, rss_mib
from benchmarks.official import OfficialSettings, OfficialStep, official_synthesis
from models.audio import MODEL_INPUT_SHAPE
from models.audio_encoder import AudioEncoder, random_audio_encoder
from models.clip import FrozenClip, load_clip
from models.identity import IdentityLoss, random_identity
from models.optimize import EditConfig, LatentOptimizer, optimize_latent, start_from_seed
from models.profiles import PROFILES
from models.stylegan2 import Generator, SynthesisOps, random_generator

# StyleGAN2 config-f widths (channel multiplier 2), as the paper's generators use.
CONFIG_F_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}
CONFIG_F_CHANNELS |= {512: 64, 1024: 32}
CLIP_MODEL = "ViT-B-32"
HEADLINE_RES = 256
SEED = 0
PSNR_STEPS = 6  # the short seeded edit of the quality check
PSNR_LR = 0.1
PSNR_REQUIRED_DB = 35.0
EDIT_STEPS = 300  # a full edit, for edits per minute
BATCH_SIZES = (1, 2, 4, 8)
SERVICE_EDIT_STEPS = 12
SERVICE_EDITS = 3
SERVICE_BATCH_LIMITS = (1, 4)  # SOUNDEDIT_MAX_BATCH of the worker draining a queue
SERVICE_BATCH_EDITS = 8
SERVICE_BATCH_S = 90.0  # what the batched-service measurement needs of the budget
LOAD_SUBMITS = 60
LOAD_POLLS = 300
LOAD_CONCURRENCY = 4
RES_1024_COST = 4.5  # a 1024 px step costs about this many 256 px steps (official: 20 s / 4.6 s)
RESERVE_S = 20.0  # kept back for writing the results
OFFICIAL_LAMBDA_ID = 0.005  # the official default; its identity network runs whatever the value

# (resolution -> the profile whose settings the project path uses there)
PROFILE_AT = {64: "smoke", 256: "landscape", 1024: "ffhq"}
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Args:
    resolutions: tuple[int, ...] = (64, 256, 1024)
    rounds: int = 4
    rounds_1024: int = 2
    ablation_rounds: int = 2
    batch_rounds: int = 2
    op_rounds: int = 3
    budget_s: float = 540.0
    skip: frozenset[str] = frozenset()  # sections left out: quality ablations batched service ops
    out: Path = Path("bench.json")
    threads: int = 0  # 0: torch's default
    thp: bool = False  # THP_MEM_ALLOC_ENABLE=1 for the whole run


@dataclass
class Shared:
    """Networks every resolution uses, built once."""

    clip: FrozenClip
    audio_encoder: AudioEncoder
    identity: IdentityLoss
    spectrogram: Tensor  # (1, 1, 128, 512)
    target: Tensor  # (1, D) the cached audio embedding
    device: torch.device


@dataclass
class Report:
    machine: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    ablations: list[dict[str, Any]] = field(default_factory=list)
    batched: dict[str, Any] = field(default_factory=dict)  # resolution -> rows
    ops: list[dict[str, Any]] = field(default_factory=list)
    service: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def fits(self, seconds: float) -> bool:
        return self.left() - RESERVE_S > seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- models


def build_shared(device: torch.device) -> Shared:
    root = logging.getLogger()
    level = root.level
    root.setLevel(
        logging.ERROR
    )  # open_clip warns that the weights are random: they are meant to be
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            clip = load_clip(CLIP_MODEL, device=device)  # random weights, the real architecture
    finally:
        root.setLevel(level)
    audio_encoder = random_audio_encoder(seed=SEED).to(device)
    identity = random_identity(seed=SEED, device=device)
    rng = torch.Generator().manual_seed(SEED)
    spectrogram = torch.rand(MODEL_INPUT_SHAPE, generator=rng).to(device)
    with torch.no_grad():
        target = F.normalize(audio_encoder(spectrogram).float(), dim=-1)  # (1, D), cached
    return Shared(clip, audio_encoder, identity, spectrogram, target, device)


def build_generator(resolution: int, device: torch.device) -> Generator:
    channels = {r: c for r, c in CONFIG_F_CHANNELS.items() if r <= resolution}
    return random_generator(resolution, channels, seed=SEED).to(device)


def project_config(resolution: int, **changes: Any) -> EditConfig:
    defaults = PROFILES[PROFILE_AT.get(resolution, "landscape")].defaults
    config = EditConfig(
        steps=EDIT_STEPS,
        lr=defaults.lr,
        lambda_l2=defaults.lambda_l2,
        lambda_id=defaults.lambda_id,
        preview_every=0,
    )
    return dataclasses.replace(config, **changes)


def project_runner(
    g: Generator, shared: Shared, w_source: Tensor, config: EditConfig
) -> LatentOptimizer:
    identity = shared.identity if config.lambda_id > 0 else None
    return LatentOptimizer(g, shared.clip, shared.target, w_source, config, identity=identity)


def official_runner(
    g: Generator, shared: Shared, w_source: Tensor, resolution: int
) -> OfficialStep:
    defaults = PROFILES[PROFILE_AT.get(resolution, "landscape")].defaults
    settings = OfficialSettings(
        lr=defaults.lr, lambda_l2=defaults.lambda_l2, lambda_id=OFFICIAL_LAMBDA_ID
    )
    return OfficialStep(
        g,
        shared.clip,
        shared.audio_encoder,
        shared.identity,
        shared.spectrogram,
        w_source,
        settings,
    )


# --------------------------------------------------------------------------- sections


def step_comparison(
    resolution: int, shared: Shared, rounds: int, budget: Budget, report: Report
) -> tuple[Generator, LatentOptimizer]:
    """Official vs project step at one resolution, alternated."""
    log(f"[{budget.elapsed():5.0f}s] {resolution} px: building models")
    g = build_generator(resolution, shared.device)
    w_source = start_from_seed(g, SEED)
    project = project_runner(g, shared, w_source, project_config(resolution))
    official = official_runner(g, shared, w_source, resolution)
    with torch.no_grad():
        agreement = float((official_synthesis(g, w_source) - g.synthesis(w_source)).abs().max())
    memory = PeakMemory(shared.device)
    log(f"[{budget.elapsed():5.0f}s] {resolution} px: timing {rounds} alternated rounds")
    samples = alternate(
        {"official": official.step, "project": project.step},
        rounds,
        shared.device,
        memory=memory,
        deadline=budget.deadline - RESERVE_S,
    )
    config = project.config
    report.steps[str(resolution)] = {
        "official": samples["official"].summary(),
        "project": samples["project"].summary(),
        "speedup": ratio(samples["official"], samples["project"]),
        "speedup_cpu_time": ratio(samples["official"], samples["project"], cpu=True),
        "generator_max_abs_diff": agreement,
        "project_settings": {
            "lambda_l2": config.lambda_l2,
            "lambda_id": config.lambda_id,
            "clip_preprocess": config.clip_preprocess,
            "ops": dataclasses.asdict(g.ops),
        },
        "memory_probe": "cuda allocator peak" if shared.device.type == "cuda" else "VmHWM delta",
    }
    del official
    return g, project


def psnr_db(a: Tensor, b: Tensor) -> float:
    """PSNR of two images in [-1, 1], over the [0, 1] range."""
    mse = float((((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@contextlib.contextmanager
def generator_ops(g: Generator, ops: SynthesisOps) -> Iterator[None]:
    before = g.ops
    g.ops = ops
    try:
        yield
    finally:
        g.ops = before


def quality_check(g: Generator, shared: Shared, report: Report) -> None:
    """A short seeded edit: optimised path vs the project's own unoptimised fp32 path."""
    w_source = start_from_seed(g, SEED)
    config = project_config(g.resolution, steps=PSNR_STEPS, lr=PSNR_LR)
    fast = optimize_latent(g, shared.clip, shared.target, w_source, config)
    with generator_ops(g, SynthesisOps.plain()):
        plain = optimize_latent(g, shared.clip, shared.target, w_source, config)
        with torch.no_grad():
            source = g.synthesis(w_source)
    entry: dict[str, Any] = {
        "resolution": g.resolution,
        "steps": PSNR_STEPS,
        "psnr_db_vs_unoptimised_fp32": psnr_db(fast.image, plain.image),
        "psnr_db_edit_vs_source": psnr_db(plain.image, source),
        "latent_max_abs_diff": float((fast.w - plain.w).abs().max()),
        "required_db": PSNR_REQUIRED_DB,
    }
    if shared.device.type == "cuda":
        for precision in ("bf16", "fp16"):
            low = optimize_latent(
                g,
                shared.clip,
                shared.target,
                w_source,
                dataclasses.replace(config, precision=precision),
            )
            entry[f"psnr_db_{precision}_vs_fp32"] = psnr_db(low.image, fast.image)
    report.quality = entry


def ablations(
    g: Generator,
    baseline: LatentOptimizer,
    shared: Shared,
    rounds: int,
    budget: Budget,
    report: Report,
) -> None:
    """Each optimisation on its own: the project path without it vs the project path.

    One round runs the project step and every variant once, so each variant's ratio comes from
    steps taken seconds apart; the project step is shared by all variants of a round.
    """
    w_source = start_from_seed(g, SEED)
    default_ops = g.ops
    res = g.resolution

    def with_ops(ops: SynthesisOps, runner: LatentOptimizer) -> Callable[[], object]:
        def step() -> object:
            with generator_ops(g, ops):
                return runner.step()

        return step

    def fresh(**changes: Any) -> LatentOptimizer:
        return project_runner(g, shared, w_source, project_config(res, **changes))

    def unfrozen() -> Callable[[], object]:
        g_copy = copy.deepcopy(g)
        clip_copy = copy.deepcopy(shared.clip)
        runner = LatentOptimizer(g_copy, clip_copy, shared.target, w_source, project_config(res))
        g_copy.requires_grad_(True)  # after the optimiser froze them: weight gradients again
        clip_copy.requires_grad_(True)
        return runner.step

    def uncached_audio() -> Callable[[], object]:
        runner = fresh()

        def step() -> object:
            with torch.no_grad():
                shared.audio_encoder(shared.spectrogram)  # re-embedding the sound every step
            return runner.step()

        return step

    def ops_variant(**changes: Any) -> Callable[[], Callable[[], object]]:
        return lambda: with_ops(dataclasses.replace(default_ops, **changes), fresh())

    cases: dict[str, tuple[str, Callable[[], Callable[[], object]]]] = {
        "all generator ops (vs SynthesisOps.plain(), the official formulation)": (
            "kept",
            lambda: with_ops(SynthesisOps.plain(), fresh()),
        ),
        "input modulation (vs per-sample weights as a grouped conv)": (
            "kept",
            ops_variant(modulation="weight"),
        ),
        "Winograd 3x3 convs via NNPACK (vs oneDNN direct)": (
            "kept (CPU)",
            ops_variant(winograd=False),
        ),
        "fused epilogue + channel-dot backward (vs separate ops)": (
            "kept",
            ops_variant(fused_epilogue=False),
        ),
        "NCHW on CPU (vs channels-last NHWC)": (
            "kept on CPU; NHWC on CUDA",
            ops_variant(channels_last=True),
        ),
        "frozen networks (vs weight gradients)": ("kept", unfrozen),
        "antialiased resize to CLIP input (vs x7 upsample + pool)": (
            "kept",
            lambda: fresh(clip_preprocess="upstream").step,
        ),
        "identity network skipped at lambda_ID = 0 (vs run every step)": (
            "kept",
            lambda: fresh(lambda_id=OFFICIAL_LAMBDA_ID).step,
        ),
        "cached audio embedding (vs re-encoding every step)": ("kept", uncached_audio),
    }
    log(f"[{budget.elapsed():5.0f}s] ablations: {len(cases)} variants, alternated with the project")
    paths: dict[str, Callable[[], object]] = {"project": baseline.step}
    for name, (_, build) in cases.items():
        paths[name] = build()
    samples = alternate(
        paths, rounds, shared.device, warmup=1, deadline=budget.deadline - RESERVE_S
    )
    with_it = samples["project"]
    for name, (decision, _) in cases.items():
        without = samples[name]
        report.ablations.append(
            {
                "optimisation": name,
                "decision": decision,
                "with_s": with_it.summary()["step_s"],
                "without_s": without.summary()["step_s"],
                "speedup": ratio(without, with_it),
                "speedup_cpu_time": ratio(without, with_it, cpu=True),
                "rounds": len(without.wall_s),
            }
        )


def batched(g: Generator, shared: Shared, rounds: int, budget: Budget, report: Report) -> None:
    """Edits per minute at batch sizes 1, 2, 4, 8 (one LatentOptimizer per size, alternated)."""
    rng = torch.Generator().manual_seed(SEED + 1)
    extra = F.normalize(
        torch.randn(max(BATCH_SIZES), shared.target.shape[1], generator=rng), dim=-1
    )
    targets = torch.cat([shared.target.cpu(), extra[1:]]).to(shared.device)  # edit 0: the audio
    sources = torch.cat([start_from_seed(g, SEED + b) for b in range(max(BATCH_SIZES))])
    config = project_config(g.resolution)
    runners = {
        b: LatentOptimizer(g, shared.clip, targets[:b], sources[:b], config) for b in BATCH_SIZES
    }
    log(f"[{budget.elapsed():5.0f}s] batched edits at {g.resolution} px: B = {BATCH_SIZES}")
    samples = alternate(
        {str(b): r.step for b, r in runners.items()},
        rounds,
        shared.device,
        deadline=budget.deadline - RESERVE_S,
    )
    single = samples["1"]
    reference_w = runners[1].w.detach()
    moved = float((reference_w - sources[:1]).norm())
    rows = []
    for b, runner in runners.items():
        s = samples[str(b)]
        step_s = s.summary()["step_s"] or math.nan
        rows.append(
            {
                "batch": b,
                "step_s": step_s,
                "edits_per_min": 60 * b / (EDIT_STEPS * step_s),
                "throughput_gain": b * (ratio(single, s) or math.nan) if b > 1 else 1.0,
                # edit 0 in this batch vs the same edit alone, relative to how far it moved
                "w_rel_diff_vs_unbatched": float((runner.w.detach()[:1] - reference_w).norm())
                / moved,
            }
        )
    report.batched[str(g.resolution)] = {
        "resolution": g.resolution,
        "steps_per_edit": EDIT_STEPS,
        "rounds": len(single.wall_s),
        "rows": rows,
    }


THP_ENV = "THP_MEM_ALLOC_ENABLE"
PROBE_READY_TIMEOUT_S = 180.0
THP_SETUP_S = 40.0  # two probe processes import torch and build their models
THP_PAYS = 1.05  # below this the setting is within run-to-run noise


def _probe_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The next protocol line of a probe (other output, e.g. warnings, is skipped)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"probe exited with {process.poll()}")
        if line.startswith(PROBE_MARK):
            return line[len(PROBE_MARK) :].strip()
    raise TimeoutError("probe did not answer")


def thp_section(rounds: int, threads: int, report: Report) -> None:
    """The project step with and without huge-page allocations, two processes alternated."""
    processes: dict[str, subprocess.Popen[str]] = {}
    try:
        for flag in ("0", "1"):
            processes[flag] = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.probe", "--threads", str(threads)],
                env={**os.environ, THP_ENV: flag},
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        for process in processes.values():
            _probe_line(process, PROBE_READY_TIMEOUT_S)
        walls: dict[str, list[float]] = {flag: [] for flag in processes}
        for r in range(rounds + 1):  # round 0 warms up
            for flag, process in processes.items():
                assert process.stdin is not None
                process.stdin.write("step\n")
                process.stdin.flush()
                result = json.loads(_probe_line(process, PROBE_READY_TIMEOUT_S))
                if r > 0:
                    walls[flag].append(result["wall"])
    finally:
        for process in processes.values():
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=60)
    pairs = [off / on for off, on in zip(walls["0"], walls["1"], strict=True)]
    gain = statistics.median(pairs)
    report.ablations.append(
        {
            "optimisation": f"huge-page CPU allocations, {THP_ENV}=1 (separate processes)",
            "decision": "environment option (off by default): "
            + ("pays on this run" if gain >= THP_PAYS else "does not pay on this run"),
            "with_s": statistics.median(walls["1"]),
            "without_s": statistics.median(walls["0"]),
            "speedup": gain,
            "speedup_cpu_time": None,
            "rounds": len(pairs),
        }
    )


def service_section(report: Report, budget: Budget) -> None:
    log(f"[{budget.elapsed():5.0f}s] service: redis-server + worker + API on 127.0.0.1")
    with service_bench.running_service() as svc:
        report.service["worker_ready_s"] = svc.worker_ready_s
        report.service["api_rss_mib_idle"] = service_bench.rss_mib_of(svc.api.pid)
        report.service["edit"] = service_bench.edit_latency(svc, SERVICE_EDIT_STEPS, SERVICE_EDITS)
        if budget.fits(SERVICE_BATCH_S):
            log(
                f"[{budget.elapsed():5.0f}s] service: a worker draining {SERVICE_BATCH_EDITS} edits"
            )
            report.service["batched"] = service_bench.batched_throughput(
                svc, SERVICE_BATCH_LIMITS, SERVICE_BATCH_EDITS, SERVICE_EDIT_STEPS
            )
        else:
            report.notes.append("batched service throughput skipped for time")
        log(f"[{budget.elapsed():5.0f}s] service: bounded API load")
        report.service["load"] = service_bench.api_load(
            svc, LOAD_SUBMITS, LOAD_POLLS, LOAD_CONCURRENCY
        )


def machine_info(args: Args, device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "thp_allocations": args.thp,
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        info["load_average_at_start"] = Path("/proc/loadavg").read_text().split()[:3]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --------------------------------------------------------------------------- the run


def run(args: Args) -> Report:
    budget = Budget(args.budget_s)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = Report(machine=machine_info(args, device))
    log(f"soundedit benchmark: {report.machine['cpu']}, {torch.get_num_threads()} threads")
    shared = build_shared(device)
    report.machine["rss_mib_after_setup"] = rss_mib()

    resolutions = sorted(set(args.resolutions), key=lambda r: (r != HEADLINE_RES, r))
    headline: tuple[Generator, LatentOptimizer] | None = None
    generators: dict[int, Generator] = {}
    for res in resolutions:
        if res == 1024:
            continue  # last: only if the budget allows
        pair = step_comparison(res, shared, args.rounds, budget, report)
        generators[res] = pair[0]
        if res == HEADLINE_RES:
            headline = pair
            if "quality" not in args.skip:
                log(f"[{budget.elapsed():5.0f}s] quality check: {PSNR_STEPS}-step seeded edit")
                quality_check(pair[0], shared, report)

    if headline is not None:
        g, baseline = headline
        step_s = report.steps[str(HEADLINE_RES)]["project"]["step_s"] or 1.0
        if "ablations" not in args.skip:
            ablations(g, baseline, shared, args.ablation_rounds, budget, report)
        if "batched" not in args.skip:
            for res in sorted(generators, reverse=True):  # the headline resolution first
                res_step = report.steps[str(res)]["project"]["step_s"] or step_s
                if budget.fits(sum(BATCH_SIZES) * (args.batch_rounds + 1) * res_step):
                    batched(generators[res], shared, args.batch_rounds, budget, report)
                else:
                    report.notes.append(f"batched edits at {res} px skipped for time")

    if "service" not in args.skip:
        try:
            service_section(report, budget)
        except (RuntimeError, TimeoutError) as exc:
            report.notes.append(f"service section failed: {exc}")

    if "ops" not in args.skip:
        log(f"[{budget.elapsed():5.0f}s] op alternatives")
        report.ops = op_bench.run_ops(device, args.op_rounds, budget.deadline - RESERVE_S)
        report.machine["fused_upconv_max_abs_diff"] = op_bench.check_fused_upconv()

    if headline is not None and "thp" not in args.skip and device.type == "cpu":
        step_s = report.steps[str(HEADLINE_RES)]["project"]["step_s"] or 1.0
        if budget.fits(THP_SETUP_S + 2 * (args.ablation_rounds + 1) * step_s):
            log(f"[{budget.elapsed():5.0f}s] huge-page allocations: two probe processes")
            try:
                thp_section(args.ablation_rounds, torch.get_num_threads(), report)
            except (RuntimeError, TimeoutError) as exc:
                report.notes.append(f"huge-page probe failed: {exc}")
        else:
            report.notes.append("huge-page probe skipped for time")

    if 1024 in args.resolutions:
        pair_256 = report.steps.get(str(HEADLINE_RES), {})
        per_round = sum((pair_256.get(k, {}).get("step_s") or 0.0) for k in ("official", "project"))
        needed = RES_1024_COST * per_round * (args.rounds_1024 + 1) + 30
        if per_round and budget.fits(needed):
            step_comparison(1024, shared, args.rounds_1024, budget, report)
        else:
            report.notes.append(
                f"1024 px skipped: about {needed:.0f} s needed, {budget.left():.0f} s left"
            )
    report.machine["seconds"] = budget.elapsed()
    return report


def save(report: Report, path: Path) -> None:
    path.write_text(json.dumps(dataclasses.asdict(report), indent=2, default=str) + "\n")


def _f(value: Any, fmt: str = ".2f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, fmt)


def table(report: Report) -> list[str]:
    """The printed summary; its last line is the headline ratio."""
    m = report.machine
    lines = [
        "",
        f"machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, device {m['device']}, "
        f"THP allocations {'on' if m['thp_allocations'] else 'off'}, "
        f"load at start {' '.join(m.get('load_average_at_start', []))}",
        "",
        "optimisation step, official path vs project (alternated rounds, medians)",
        f"{'res':>5} {'official s':>11} {'project s':>10} {'speedup':>8} {'(cpu time)':>10} "
        f"{'official MiB':>13} {'project MiB':>12} {'rounds':>6}",
    ]
    for res, entry in sorted(report.steps.items(), key=lambda kv: int(kv[0])):
        o, p = entry["official"], entry["project"]
        lines.append(
            f"{res:>5} {_f(o['step_s']):>11} {_f(p['step_s']):>10} {_f(entry['speedup']):>7}x "
            f"{_f(entry['speedup_cpu_time']):>9}x {_f(o['peak_step_mib'], '.0f'):>13} "
            f"{_f(p['peak_step_mib'], '.0f'):>12} {p['samples']:>6}"
        )
    q = report.quality
    if q:
        lines += [
            "",
            f"quality ({q['resolution']} px, {q['steps']}-step seeded edit): PSNR vs the "
            f"project's unoptimised fp32 path {_f(q['psnr_db_vs_unoptimised_fp32'], '.1f')} dB "
            f"(>= {q['required_db']:.0f} required); the edit itself moved the image to "
            f"{_f(q['psnr_db_edit_vs_source'], '.1f')} dB from its source",
        ]
        for precision in ("bf16", "fp16"):
            if f"psnr_db_{precision}_vs_fp32" in q:
                lines.append(
                    f"  {precision} autocast vs fp32: {_f(q[f'psnr_db_{precision}_vs_fp32'], '.1f')} dB"
                )
    if report.ablations:
        lines += [
            "",
            f"each optimisation on its own ({HEADLINE_RES} px): time without / time with",
            f"{'':<66} {'with s':>7} {'without s':>9} {'speedup':>8} {'(cpu)':>6}  decision",
        ]
        for a in report.ablations:
            lines.append(
                f"{a['optimisation']:<66} {_f(a['with_s']):>7} {_f(a['without_s']):>9} "
                f"{_f(a['speedup']):>7}x {_f(a['speedup_cpu_time']):>5}x  {a['decision']}"
            )
    if report.ops:
        lines += ["", "op alternatives, forward + backward (ms; x = time / kept variant's)"]
        for row in report.ops:
            lines.append(
                f"  {row['group']:<28} {row['variant']:<45} {_f(row['ms'], '.1f'):>8} ms "
                f"{_f(row['vs_kept']):>6}x"
            )
    for b in report.batched.values():
        lines += [
            "",
            f"batched edits ({b['resolution']} px, {b['steps_per_edit']} steps per edit, "
            f"{b['rounds']} rounds)",
            f"{'B':>3} {'s/step':>8} {'edits/min':>10} {'gain':>6} {'|dw| vs B=1':>12}",
        ]
        for row in b["rows"]:
            lines.append(
                f"{row['batch']:>3} {_f(row['step_s']):>8} {_f(row['edits_per_min'], '.3f'):>10} "
                f"{_f(row['throughput_gain']):>5}x {_f(row['w_rel_diff_vs_unbatched'], '.1e'):>12}"
            )
    s = report.service
    if s:
        e, load = s.get("edit", {}), s.get("load", {})
        lines += [
            "",
            "service (smoke profile, 127.0.0.1)",
            f"  worker ready after {_f(s.get('worker_ready_s'), '.1f')} s; "
            f"{e.get('steps')}-step edit submit->succeeded: first {_f(e.get('first_s'))} s, "
            f"then median {_f(e.get('warm_median_s'))} s",
        ]
        for kind in ("submit", "poll"):
            k = load.get(kind, {})
            if k:
                lines.append(
                    f"  {kind:<6} p50 {_f(k['p50_ms'], '.1f')} ms, p99 {_f(k['p99_ms'], '.1f')} ms, "
                    f"{_f(k['throughput_rps'], '.0f')} req/s ({k['ok']}/{k['requests']} ok, "
                    f"{k['concurrency']} clients)"
                )
        for row in s.get("batched", []):
            lines.append(
                f"  worker with max_batch {row['max_batch']}: {row['edits']} queued "
                f"{row['steps']}-step edits in {_f(row['wall_s'], '.1f')} s = "
                f"{_f(row['edits_per_min'], '.1f')} edits/min ({_f(row['gain'])}x; "
                f"batches of {row['batch_sizes']})"
            )
        lines.append(
            f"  API RSS: idle {_f(s.get('api_rss_mib_idle'), '.0f')} MiB, after load "
            f"{_f(load.get('api_rss_mib_after'), '.0f')} MiB"
        )
    for note in report.notes:
        lines.append(f"note: {note}")
    headline = report.steps.get(str(HEADLINE_RES), {}).get("speedup")
    lines.append(f"step speedup vs official: {_f(headline)}×")
    return lines
