"""Shared helpers: interleaved timing, the machine description, cached data and models, report sections."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK_DIR = ROOT / "outputs" / "bench"
DEFAULT_DOC = ROOT / "docs" / "benchmarks.md"

#: order of the sections in ``docs/benchmarks.md`` (name -> title)
SECTIONS: dict[str, str] = {
    "training": "Training throughput: Ignite trainer vs a bare PyTorch loop",
    "inference": "Inference: whole pipeline vs the network forward alone",
    "memory": "Peak memory (resident set size)",
    "scaling": "Scaling: slices per volume and image size",
    "threads": "Speed-up 1: OpenMP thread settings on a shared machine",
    "speedups": "Speed-up 2: preprocessing, PNG overlay, channels-last, inference mode",
    "compile": "Speed-up 3: torch.compile on CPU",
    "quality": "Detection quality: tuning sweep, headline table on test, pinned setting",
}


# ----------------------------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------------------------


def interleave(
    cases: Mapping[str, Callable[[], Any]],
    repeats: int = 5,
    warmup: int = 1,
    on_round: Callable | None = None,
    cpu: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Time every case ``repeats`` times, interleaved (A B C, C B A, A B C, ...), after ``warmup`` untimed rounds.

    Alternating the order cancels slow drifts of the machine's load between the cases; the per-round values can be
    paired (see :func:`paired_ratio`). A case that returns a float reports its own time (e.g. without its set-up);
    otherwise the wall time of the call is used. With ``cpu`` (a dict), the process CPU time of every timed call
    (``time.process_time``: all threads, user + system) is recorded there too: with idle threads sleeping, it measures
    the work done and is much less disturbed than wall time by other processes on the machine.

    Returns:
        ``{name: [seconds per repetition]}``.
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            own = cases[name]()
            elapsed = time.perf_counter() - start
            times[name].append(float(own) if isinstance(own, float) else elapsed)
            if cpu is not None:
                cpu.setdefault(name, []).append(time.process_time() - start_cpu)
        if on_round is not None:
            on_round(r, times)
    return times


def median(values: Sequence[float]) -> float:
    """Median (NaN for no values)."""
    return float(statistics.median(values)) if len(values) else float("nan")


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """(25th, 75th) percentiles; (min, max) below four values."""
    v = sorted(values)
    if len(v) < 4:
        return (v[0], v[-1]) if v else (float("nan"), float("nan"))
    q = statistics.quantiles(v, n=4)
    return q[0], q[2]


def paired_ratio(a: Sequence[float], b: Sequence[float]) -> float:
    """Median over the repetitions of ``a[i] / b[i]`` (each pair measured in the same round)."""
    return median([x / y for x, y in zip(a, b) if y > 0])


def fmt_time(seconds: float) -> str:
    """Seconds with a unit that keeps three significant digits."""
    if seconds != seconds:  # NaN
        return "n/a"
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def fmt_signed(seconds: float) -> str:
    """A signed time difference, e.g. ``+12.0 ms`` or ``-3.1 ms``."""
    return ("-" if seconds < 0 else "+") + fmt_time(abs(seconds))


def fmt_spread(values: Sequence[float]) -> str:
    """``median [q25-q75]`` of a list of seconds."""
    lo, hi = quartiles(values)
    return f"{fmt_time(median(values))} [{fmt_time(lo)}-{fmt_time(hi)}]"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# machine
# ----------------------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    m = re.search(r"^model name\s*:\s*(.+)$", text, flags=re.MULTILINE)
    return m.group(1).strip() if m else (platform.processor() or "unknown")


def _mem_total_gb() -> float:
    try:
        m = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), flags=re.MULTILINE)
        return int(m.group(1)) / 1024**2 if m else float("nan")
    except OSError:
        return float("nan")


def load_average() -> float:
    """One-minute load average (NaN where unavailable)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return float("nan")


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, library versions and thread settings of this process."""
    import monai
    import numpy
    from ignite import __version__ as ignite_version

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 1
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gb": round(_mem_total_gb(), 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "ignite": ignite_version,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(unset)"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS", "(unset)"),
        "load_average_1min": round(load_average(), 2),
    }


def machine_markdown(info: Mapping[str, Any]) -> str:
    """One-paragraph Markdown description of :func:`machine_info`."""
    return (
        f"CPU: {info['cpu']}, {info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs, "
        f"{info['memory_gb']} GB RAM. Python {info['python']}, torch {info['torch']}, MONAI {info['monai']}, "
        f"Ignite {info['ignite']}, numpy {info['numpy']}. Threads: torch intra-op {info['torch_threads']}, "
        f"inter-op {info['torch_interop_threads']}; OMP_NUM_THREADS={info['OMP_NUM_THREADS']}, "
        f"OMP_WAIT_POLICY={info['OMP_WAIT_POLICY']}, MKL_NUM_THREADS={info['MKL_NUM_THREADS']}."
    )


# ----------------------------------------------------------------------------------------------------------------
# context: work folder, cached cohort and models
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What every benchmark receives: where to work, how hard to try, and the shared data."""

    work_dir: Path = DEFAULT_WORK_DIR
    doc: Path | None = DEFAULT_DOC
    repeats: int = 5
    quick: bool = False
    n_healthy: int = 10
    n_lesion: int = 4
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work_dir = Path(self.work_dir)
        self.doc = Path(self.doc) if self.doc is not None else None

    @property
    def datalist(self) -> Path:
        """The benchmark cohort (made once, reused while its settings do not change)."""
        return bench_cohort(self.work_dir / "data", self.n_healthy, self.n_lesion, self.seed)

    def items(self, section: str) -> list[dict]:
        """Absolute-path entries of one datalist section."""
        from monai_qrvae.data.datalist import load_datalist

        return load_datalist(self.datalist, section=section, check=False)

    def model_dir(self, name: str = "small", **config: Any) -> Path:
        """An untrained model folder (config + weights) of :func:`monai_qrvae.workflows.load_model`'s layout.

        Timing and memory do not depend on the weights' values, so no training is needed.
        """
        return untrained_model_dir(self.work_dir / "models" / name, **config)


def bench_cohort(out_dir: Path, n_healthy: int, n_lesion: int, seed: int) -> Path:
    """Make (or reuse) the synthetic cohort of the benchmarks; return its datalist."""
    from monai_qrvae.data import make_cohort

    out_dir = Path(out_dir)
    stamp = out_dir / "bench_stamp.json"
    settings = {"n_healthy": n_healthy, "n_lesion": n_lesion, "seed": seed}
    datalist = out_dir / "datalist.json"
    if datalist.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return datalist
    start = time.perf_counter()
    print(f"[bench] making the benchmark cohort ({n_healthy} healthy, {n_lesion} lesion) in {out_dir}", flush=True)
    datalist = Path(make_cohort(out_dir, n_healthy=n_healthy, n_lesion=n_lesion, seed=seed))
    stamp.write_text(json.dumps(settings))
    print(f"[bench] cohort ready in {time.perf_counter() - start:.1f} s", flush=True)
    return datalist


def untrained_model_dir(path: Path, **config: Any) -> Path:
    """Write ``model_config.json`` and ``model.pt`` of an untrained network (reused if the config matches)."""
    from monai_qrvae.workflows import CONFIG_FILE, WEIGHTS_FILE, ModelConfig, build_networks

    path = Path(path)
    cfg = ModelConfig(**config)
    wanted = asdict(cfg)
    cfg_file = path / CONFIG_FILE
    if (
        (path / WEIGHTS_FILE).is_file()
        and cfg_file.is_file()
        and json.loads(cfg_file.read_text()) == json.loads(json.dumps(wanted))
    ):
        return path
    torch.manual_seed(0)
    _, net = build_networks(cfg)
    path.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path / WEIGHTS_FILE)
    cfg.save(cfg_file)
    return path


def pipeline_defaults() -> dict[str, Any]:
    """The defaults a user gets from :mod:`monai_qrvae.workflows` (read from the signatures, so they track the code)."""
    import inspect

    from monai_qrvae import workflows
    from monai_qrvae.defaults import method_defaults
    from monai_qrvae.preprocessing import volume_transforms

    out: dict[str, Any] = method_defaults("qrvae").as_dict()
    for fn, names in (
        (workflows.train, ("epochs", "batch_size", "lr", "num_slices", "image_size", "preset")),
        (workflows.infer, ("alpha", "per", "median_size", "min_size", "score_median", "save_png")),
        (volume_transforms, ("lower", "upper", "clip")),
    ):
        params = inspect.signature(fn).parameters
        out.update({n: params[n].default for n in names if n in params and params[n].default not in (None, "default")})
    return out


def anomaly_transforms() -> list[Any]:
    """The post-processing transforms that :func:`monai_qrvae.workflows.infer` attaches (maps, FDR, filter)."""
    from monai_qrvae.workflows import _anomaly_handlers

    d = pipeline_defaults()
    post = _anomaly_handlers(d["alpha"], d["per"], d["median_size"], d["min_size"], d["score_median"])
    return [h.transform for h in post]


# ----------------------------------------------------------------------------------------------------------------
# report sections
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Section:
    """One benchmark's result: Markdown for the report, raw data for JSON, and the conditions it ran under."""

    name: str
    body: str
    data: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    started: str = ""
    seconds: float = 0.0
    load_before: float = float("nan")
    load_after: float = float("nan")

    @property
    def title(self) -> str:
        return SECTIONS.get(self.name, self.name)

    def markdown(self) -> str:
        """The section as it appears in ``docs/benchmarks.md``."""
        return (
            f"## {self.title}\n\n"
            f"_Measured {self.started} in {self.seconds:.0f} s; 1-min load average {self.load_before:.1f} before, "
            f"{self.load_after:.1f} after (2 cores: a load above 2 means other work shared the CPUs)._\n\n"
            f"{self.body.strip()}\n"
        )


def timed_section(name: str, body_fn: Callable[[], tuple[str, dict[str, Any]]]) -> Section:
    """Run ``body_fn() -> (markdown, data)`` and wrap it in a :class:`Section` with time and load figures."""
    started = time.strftime("%Y-%m-%d %H:%M")
    load_before = load_average()
    start = time.perf_counter()
    body, data = body_fn()
    return Section(
        name=name,
        body=body,
        data=data,
        machine=machine_info(),
        started=started,
        seconds=time.perf_counter() - start,
        load_before=load_before,
        load_after=load_average(),
    )


_HEADER = """# Benchmarks

Speed, memory, scaling and detection quality of monai-qrvae, each measured **side by side in one process**
(interleaved repetitions A, B, B, A, ...; medians with the interquartile range in brackets; ratios are medians of
the per-round ratios). Regenerate with `make bench` (`python -m benchmarks.run_all`, about 10 minutes). The
detection-quality section is written by `qrvae sweep` (tuning split), `qrvae benchmark` (test split, 3 seeds) and
`qrvae demo --pinned` (a small fixed setting a test recomputes); its commands are in the section. Each section
records when it ran and the machine's load: these are shared 2-core machines, so absolute times move with the other
users' work; the ratios are the figures to read.

Changes made because of these figures (before/after in the speed-up sections):

1. `import monai_qrvae` sets `OMP_WAIT_POLICY=PASSIVE` unless the user set it or torch is already imported: idle
   OpenMP threads sleep instead of spinning. On a shared CPU this made training steps, forwards and preprocessing
   several times faster (section "thread settings").
2. Masked percentile normalisation uses `np.percentile` (a partition, not a sort) and a dense `torch.where`: about 2x
   on the normaliser, about 1.3x on the whole per-volume preprocessing (section "speed-up 2").
3. The PNG overlay (written by default by `qrvae infer` and `evaluate`; per volume it costs about as much as all the
   rest of the pipeline) uses fixed figure margins instead of `tight_layout`: a modest 10-25 % of its CPU time
   (section "speed-up 2").

Measured and not adopted: channels-last, `torch.inference_mode`, one batched forward instead of MONAI's `SliceInferer`
(all within a few per cent), `torch.compile` (see its section).

"""


def _machine_block(info: Mapping[str, Any]) -> str:
    return "## Machine\n\n" + machine_markdown(info) + "\n"


def update_doc(doc: Path, sections: Sequence[Section]) -> Path:
    """Replace (or add) the given sections of ``doc``, keeping the other sections already there."""
    doc = Path(doc)
    text = doc.read_text() if doc.is_file() else ""
    existing: dict[str, str] = {}
    for m in re.finditer(r"<!-- bench:(\w+) -->\n(.*?)<!-- /bench:\1 -->\n", text, flags=re.DOTALL):
        existing[m.group(1)] = m.group(2)
    for section in sections:
        existing[section.name] = section.markdown()
    info = next((s.machine for s in reversed(sections) if s.machine), None) or machine_info()
    ordered = [n for n in SECTIONS if n in existing] + [n for n in existing if n not in SECTIONS]
    out = _HEADER
    out += "<!-- bench:machine -->\n" + _machine_block(info) + "<!-- /bench:machine -->\n\n"
    for name in ordered:
        if name == "machine":
            continue
        out += f"<!-- bench:{name} -->\n{existing[name].rstrip()}\n<!-- /bench:{name} -->\n\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(out.rstrip() + "\n")
    os.replace(tmp, doc)
    return doc


def save_section(section: Section, ctx: Context) -> None:
    """Print the section, keep its raw data as JSON under ``work_dir/results`` and update the report."""
    print("\n" + section.markdown(), flush=True)
    results = ctx.work_dir / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{section.name}.json").write_text(json.dumps(asdict(section), indent=2, default=str))
    if ctx.doc is not None:
        update_doc(ctx.doc, [section])


# ----------------------------------------------------------------------------------------------------------------
# command line of the single benchmarks
# ----------------------------------------------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options shared by every benchmark's command line."""
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="scratch folder (outputs/bench)")
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="report to update (docs/benchmarks.md)")
    parser.add_argument("--no-doc", action="store_true", help="print only, do not update the report")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per case (5)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repetitions (smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before running")
    return parser


def context_from_args(args: argparse.Namespace) -> Context:
    """A :class:`Context` from :func:`add_common_args` options (also applies ``--threads``)."""
    if getattr(args, "threads", None):
        torch.set_num_threads(int(args.threads))
    repeats = min(args.repeats, 3) if args.quick else args.repeats
    return Context(work_dir=args.work_dir, doc=None if args.no_doc else args.doc, repeats=repeats, quick=args.quick)


def standalone(name: str, run: Callable[[Context], Section], argv: Sequence[str] | None = None) -> Section:
    """``python -m benchmarks.<module>``: parse the common options, run, print and save."""
    parser = add_common_args(argparse.ArgumentParser(prog=f"python -m benchmarks.{name}"))
    args = parser.parse_args(argv)
    ctx = context_from_args(args)
    section = run(ctx)
    save_section(section, ctx)
    return section


def run_process(
    args: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path = ROOT, timeout: float = 1800.0
) -> tuple[int, str, Any, float]:
    """Run a child to completion; return ``(exit status, stdout, its own resource usage, wall seconds)``.

    The child is reaped with ``os.wait4``, so the resource usage (``ru_maxrss`` in KiB, ``ru_utime``, ``ru_stime``)
    is that child's alone (``RUSAGE_CHILDREN`` would mix all children).
    """
    import subprocess
    import tempfile

    start = time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as out:
        proc = subprocess.Popen(list(args), cwd=cwd, env=None if env is None else dict(env), stdout=out, stderr=out)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: keep Popen from waiting again
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    return proc.returncode, text, usage, wall


def python_exe() -> str:
    """The interpreter running the benchmarks (children use the same one)."""
    return sys.executable
