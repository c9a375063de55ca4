"""OpenMP thread settings on a shared machine: spin-waiting threads, passive threads, one thread.

PyTorch's CPU wheel runs its intra-op parallelism on GNU OpenMP (``libgomp``). By default an idle OpenMP thread
*spins* for a while before it sleeps. On a machine whose cores are shared with other processes (here: 2 cores, often
5-10 runnable processes) a spinning thread holds a core that its partner thread, or another user, needs, and every
parallel region waits for a descheduled partner: small operations become 10-20x slower.

The wait policy is read once, when ``libgomp`` is loaded (``import torch``), so each variant runs in its own child
process, with the same fixed workload; the variants take turns. Variants:

- ``spin (libgomp default)``: ``OMP_WAIT_POLICY`` unset and torch imported before ``monai_qrvae`` (the behaviour
  before ``monai_qrvae`` set a default);
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE``, which ``import monai_qrvae`` now sets by default when torch is not yet
  imported and the variable is not set (``os.environ.setdefault``);
- ``1 thread``: ``torch.set_num_threads(1)`` (no parallel regions at all).

Workload per child (after one warm-up pass): training steps (QR-VAE ``small``, batch 32, Adam), inference forwards
(20 slices), post-processing (anomaly maps + Benjamini-Hochberg FDR on 64 x 64 x 20) and masked percentile
normalisation of a 3 x 85 x 103 x 90 volume; measured on the machine as found, then again while ``BUSY_PROCESSES``
CPU-bound loops compete for the cores (a controlled stand-in for other users' jobs). The CPU time the child consumed
(user + system) is also reported: spin waiting burns CPU that other users of the machine lose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks.cli import standalone
from benchmarks.context import Context
from benchmarks.processes import child_env, python_exe, run_process
from benchmarks.report import timed
from benchmarks.timing import fmt_time, md_table, median, paired_ratio

BUSY_PROCESSES = 2  # CPU-bound competitors in the "busy" condition: as many as this machine has cores

VARIANTS: dict[str, dict[str, Any]] = {
    "spin (libgomp default, before)": {"env": {"OMP_WAIT_POLICY": None}, "torch_first": True, "threads": None},
    "passive (monai_qrvae default, after)": {
        "env": {"OMP_WAIT_POLICY": "PASSIVE"},
        "torch_first": False,
        "threads": None,
    },
    "1 thread": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}, "torch_first": False, "threads": 1},
}

_BOOT = (
    "import json, sys\n"
    "spec = json.loads(sys.argv[1])\n"
    "if spec['torch_first']:\n"
    "    import torch  # libgomp starts here, before monai_qrvae can set a default wait policy\n"
    "from benchmarks.bench_threads import child_main\n"
    "child_main(spec)\n"
)


def _time(fn: Any, n: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return median(times)


def child_main(spec: dict[str, Any]) -> None:
    """The fixed workload of one child; prints one JSON line with the median time of each part."""
    import torch

    from benchmarks.context import anomaly_transforms
    from benchmarks.workloads import train_step
    from monai_qrvae.transforms import MaskedScaleIntensityPercentiles
    from monai_qrvae.workflows import ModelConfig, build_loss, build_networks

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    quick = bool(spec.get("quick"))
    torch.manual_seed(0)
    cfg = ModelConfig()
    vae, net = build_networks(cfg)
    loss = build_loss(cfg)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-4)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    disc = ((xx**2 + yy**2) < 0.8).float()
    x = torch.rand(32, 3, 64, 64) * disc
    m = disc.expand(32, 1, 64, 64)

    def step() -> None:
        train_step(vae, loss, x, m, opt)

    xs = x[:20]

    def forward() -> None:
        net.eval()
        with torch.no_grad():
            net(xs)

    pred = torch.randn(9, 64, 64, 20)
    brain = disc[..., None].expand(1, 64, 64, 20).clone()
    maps, fdr = anomaly_transforms()[:2]  # as infer attaches them (z-map median filter, FDR)

    def post() -> None:
        fdr(maps({"pred": pred, "brain_mask": brain}))

    g = torch.Generator().manual_seed(0)
    volume = torch.rand(3, 85, 103, 90, generator=g) * 100
    zz = torch.linspace(-1, 1, 90)
    ball = (
        (torch.linspace(-1, 1, 85)[:, None, None] ** 2 + torch.linspace(-1, 1, 103)[None, :, None] ** 2)
        + zz[None, None] ** 2
    ) < 0.7
    ball = ball[None].float()
    norm = MaskedScaleIntensityPercentiles()

    def prep() -> None:
        norm(volume, ball)

    n = 1 if quick else 2

    def workload() -> dict[str, float]:
        return {
            "train_step": _time(step, n),
            "forward_20": _time(forward, 2 * n),
            "post": _time(post, 2 * n),
            "prep": _time(prep, n),
        }

    result: dict[str, Any] = {"threads": torch.get_num_threads()}
    result["wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "(unset)")
    result["as found"] = workload()
    # the same again while BUSY_PROCESSES CPU-bound loops compete for the cores (started and stopped here, by pid)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(BUSY_PROCESSES)]
    try:
        time.sleep(0.5)
        result["busy"] = workload()
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    print("BENCH_RESULT " + json.dumps(result), flush=True)


def run_child(spec: dict[str, Any], env_changes: dict[str, str | None]) -> dict[str, Any]:
    """Run one child; return its JSON result plus ``wall`` and ``cpu`` (user + system) seconds."""
    code, out, usage, wall = run_process([python_exe(), "-c", _BOOT, json.dumps(spec)], env=child_env(env_changes))
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if line is None or code:
        raise RuntimeError(f"benchmark child failed (exit {code}): {out[-2000:]}")
    result = json.loads(line[len("BENCH_RESULT ") :])
    result["wall"] = wall
    result["cpu"] = usage.ru_utime + usage.ru_stime
    return result


def _run_children(ctx: Context) -> dict[str, list[dict[str, Any]]]:
    names = list(VARIANTS)
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    rounds = max(1, int(ctx.options.get("thread_rounds", 1)))  # a spin-waiting child alone takes about a minute
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            v = VARIANTS[name]
            spec = {"torch_first": v["torch_first"], "threads": v["threads"], "quick": ctx.quick}
            results[name].append(run_child(spec, v["env"]))
            print(f"[threads] round {r + 1}/{rounds} {name}: {results[name][-1]}", flush=True)
    return results


@timed("threads")
def run(ctx: Context) -> tuple[str, dict[str, Any]]:
    """Run the thread-settings benchmark (one child process per variant and round)."""
    results = _run_children(ctx)
    parts = [
        ("train_step", "training step (batch 32)", 32),
        ("forward_20", "forward, 20 slices", 20),
        ("post", "anomaly maps + FDR (1 volume)", None),
        ("prep", "masked percentile normalisation (1 volume)", None),
    ]
    base = "spin (libgomp default, before)"
    rows = []
    for condition, label in (("as found", "as found"), ("busy", f"+{BUSY_PROCESSES} busy processes")):
        for name, runs in results.items():
            row = [label, name]
            for key, _, per in parts:
                values = [r[condition][key] for r in runs]
                t = median(values)
                cell = fmt_time(t)
                if per == 32:
                    cell += f" ({32 / t:.0f} slices/s)"
                if name != base:
                    cell += f", **x{paired_ratio([r[condition][key] for r in results[base]], values):.1f}**"
                row.append(cell)
            rows.append(row)
    table = md_table(["machine", "variant"] + [label for _, label, _ in parts], rows)
    usage = md_table(
        ["variant", "child CPU time", "child wall time"],
        [
            [name, f"{median([r['cpu'] for r in runs]):.1f} s", f"{median([r['wall'] for r in runs]):.1f} s"]
            for name, runs in results.items()
        ],
    )
    body = (
        "Each cell: median time per unit, and **x speed-up** over the spin-waiting default. Each child measures its "
        f"workload twice: on the machine as found, then while {BUSY_PROCESSES} CPU-bound processes (`while True: "
        "pass`, started and stopped by the child) compete for the cores, as other users' jobs do on a shared "
        "machine. The variants run one after the other, so 'as found' may differ a little between them.\n\n"
        f"{table}\n\nWhole children (imports, both conditions):\n\n{usage}\n\n"
        "- The change: `monai_qrvae/__init__.py` sets `OMP_WAIT_POLICY=PASSIVE` with `os.environ.setdefault` when "
        "torch is not yet imported (a user's own setting wins; importing torch first keeps libgomp's default, as "
        "`python -m monai.bundle run` does).\n"
        "- With free cores the wait policy matters little (a sleeping thread takes some microseconds to wake); when "
        "the cores are shared, spinning threads hold the CPU their partner or another user needs. `1 thread` avoids "
        "the problem too, but gives up the second core when it is free.\n"
        "- Every other section of this report ran with the new default (passive).\n"
    )
    return body, {"children": results}


if __name__ == "__main__":
    standalone("bench_threads", run)
