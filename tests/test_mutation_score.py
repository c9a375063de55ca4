"""``tools/mutation_score.py``'s equivalence rule: a survivor counts as equivalent only when it drops a keyword
argument whose literal value is the callee's own default (checked on the callee's signature); anything else is a
gap unless reviewed by hand."""

import importlib.util
import re
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mutation_score.py"
spec = importlib.util.spec_from_file_location("mutation_score", TOOL)
mutation_score = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mutation_score)

ORIG = "def x_f__mutmut_1(p):\n    return benjamini_hochberg(p, alpha=ALPHA, per=PER)\n"


@pytest.mark.parametrize(
    "alpha, per, mutated, equivalent",
    [
        ("0.05", '"volume"', "benjamini_hochberg(p, per=PER)", True),  # 0.05 is the default alpha
        ("0.05", '"volume"', "benjamini_hochberg(p, alpha=ALPHA)", True),  # "volume" is the default per
        ("0.1", '"volume"', "benjamini_hochberg(p, per=PER)", False),  # 0.1 is not the default
        ("0.05", '"slice"', "benjamini_hochberg(p, alpha=ALPHA)", False),
        ("0.05", '"volume"', "benjamini_hochberg(p, alpha=None, per=PER)", False),  # None is not "dropped"
        ("0.05", '"volume"', "benjamini_hochberg(None, alpha=ALPHA, per=PER)", False),  # a positional argument
        ("0.05", '"volume"', "benjamini_hochberg(p, alpha=ALPHA, per=PER) + 0", False),
    ],
)
def test_only_a_dropped_keyword_equal_to_the_callee_default_is_equivalent(alpha, per, mutated, equivalent):
    orig = ORIG.replace("ALPHA", alpha).replace("PER", per)
    new = "def x_f__mutmut_1(p):\n    return " + mutated.replace("ALPHA", alpha).replace("PER", per) + "\n"
    name = "monai_qrvae.anomaly.fdr.x_f__mutmut_1"
    assert mutation_score.verified_default("monai_qrvae.anomaly.fdr", name, orig, new) is equivalent


def test_an_integer_literal_does_not_stand_for_a_float_default():
    orig = "def x_f__mutmut_1(p):\n    return benjamini_hochberg(p, alpha=0)\n"
    new = "def x_f__mutmut_1(p):\n    return benjamini_hochberg(p, )\n"
    assert not mutation_score.verified_default("monai_qrvae.anomaly.fdr", "m.x_f__mutmut_1", orig, new)


def test_categories_put_unreviewed_survivors_in_gap():
    assert mutation_score.category("x = f(a, device=d)  ->  x = f(a, device=None)") == "device"
    assert mutation_score.category("d[self.key] = None  ->  d[self.key] = 1") == "gap"
    assert mutation_score.category('key: str = "brain_mask"  ->  key: str = "XXbrain_maskXX"') == "gap"


def test_is_equivalent_separates_equivalent_from_accepted_survivors():
    reviewed = dict(mutation_score._EQUIVALENTS)
    assert reviewed, "tools/mutation_equivalents.toml lists no reviewed survivor"
    for name, why in reviewed.items():
        assert mutation_score.is_equivalent("reviewed", name) is why.startswith("equivalent:")
    assert mutation_score.is_equivalent("default", "x") and mutation_score.is_equivalent("metatensor", "x")
    assert not mutation_score.is_equivalent("dtype", "x") and not mutation_score.is_equivalent("device", "x")
    assert not mutation_score.is_equivalent("gap", "x")


def test_the_testing_page_lists_exactly_the_reviewed_survivors():
    """docs/testing.md's reviewed table (written by ``mutation_score.py --markdown``) and
    tools/mutation_equivalents.toml name the same mutants, each with the reason the file gives."""
    page = (TOOL.parents[1] / "docs" / "testing.md").read_text()
    section = page.split("**reviewed**", 1)[1].split("\n\n", 2)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    listed = {}
    for row in rows:
        short, module = row.split("`")[1], row.split("(", 1)[1].split(")", 1)[0]
        cells = re.split(r"(?<!\\)\|", row)  # a cell's own "|" is written "\|"
        listed[f"{module}.{short}"] = cells[-2].strip().replace("\\|", "|")
    assert listed == mutation_score._EQUIVALENTS
