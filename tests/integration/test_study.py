"""``qrvae sweep`` (choices on tuning) and ``qrvae benchmark`` (headline on test), end to end on a tiny cohort."""

from __future__ import annotations

import csv
import json

import pytest

from monai_qrvae.cli import main
from monai_qrvae.tables import read_doc_block


@pytest.fixture(scope="module")
def tiny_cohort(cohort_factory):
    return cohort_factory("study", "data", n_healthy=6, n_lesion=4, seed=1, spacing=3.0)


@pytest.mark.slow
def test_sweep_picks_the_best_tuning_auprc_and_never_reads_test(tiny_cohort, tmp_path, monkeypatch):
    from monai_qrvae import workflows

    sections = []
    real_evaluate = workflows.evaluate

    def spy(*args, **kwargs):
        sections.append(kwargs.get("section"))
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(workflows, "evaluate", spy)
    out = tmp_path / "sweep"
    argv = ["sweep", "--datalist", str(tiny_cohort), "--out", str(out), "--methods", "qrvae", "flair"]
    assert main([*argv, "--lrs", "1e-3", "--epochs", "1", "2", "--no-progress"]) == 0
    assert set(sections) == {"tuning"}
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 2 * 2 + 2  # qrvae: 2 epoch counts x 2 filters; flair: 2 filters
    picked = json.loads((out / "sweep.json").read_text())["picked"]
    for method in ("qrvae", "flair"):
        best = max(float(r["auprc"]) for r in rows if r["method"] == method)
        assert picked[method]["auprc"] == pytest.approx(best)
    assert "**yes**" in (out / "sweep.md").read_text()
    # sweeping again into the same folder would score the 2-epoch weights as the 1-epoch ones: refused, one line
    assert main([*argv, "--lrs", "1e-3", "--epochs", "1", "2", "--no-progress"]) == 2


@pytest.mark.slow
def test_benchmark_mean_sd_over_seeds_and_doc_blocks(tiny_cohort, tmp_path):
    doc = tmp_path / "README.md"
    doc.write_text("<!-- headline:start -->\nold\n<!-- headline:end -->\n<!-- demo:start -->\nold\n<!-- demo:end -->\n")
    out = tmp_path / "bench"
    argv = ["benchmark", "--datalist", str(tiny_cohort), "--out", str(out), "--methods", "qrvae", "flair"]
    assert main([*argv, "--seeds", "0", "1", "--update-docs", str(doc), "--no-progress"]) == 0
    rows = list(csv.DictReader((out / "headline.csv").open()))
    assert [(r["method"], r["seed"]) for r in rows] == [("qrvae", "0"), ("qrvae", "1"), ("flair", "0")]
    results = json.loads((out / "headline.json").read_text())
    auprc = [r["auprc"] for r in results["qrvae"]]
    headline = read_doc_block(doc, "headline")
    mean = sum(auprc) / 2
    sd = abs(auprc[0] - auprc[1]) / 2**0.5
    assert f"| QR-VAE (ours) | {mean:.3f} ± {sd:.3f} |" in headline
    demo = read_doc_block(doc, "demo")
    assert f"| QR-VAE (ours) | {auprc[0]:.3f} |" in demo  # the first seed alone: what `make demo` prints
