"""Report sections: one benchmark's result as Markdown and JSON, and the sections of ``docs/benchmarks.md``."""

from __future__ import annotations

import functools
import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.context import Context
from benchmarks.machine import load_average, locked_markdown, machine_info, machine_markdown

__all__ = ["SECTIONS", "Section", "timed_section", "timed", "update_doc", "save_section"]

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
    locked = locked_markdown()
    return "## Machine\n\n" + machine_markdown(info) + "\n" + (f"\n{locked}\n" if locked else "")


def timed(name: str) -> Callable[[Callable[[Context], tuple[str, dict[str, Any]]]], Callable[[Context], Section]]:
    """Decorator: a benchmark's ``body(ctx) -> (markdown, data)`` becomes its ``run(ctx) -> Section``
    (:func:`timed_section` with the section ``name``)."""

    def wrap(body: Callable[[Context], tuple[str, dict[str, Any]]]) -> Callable[[Context], Section]:
        @functools.wraps(body)
        def run(ctx: Context) -> Section:
            return timed_section(name, lambda: body(ctx))

        return run

    return wrap


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
