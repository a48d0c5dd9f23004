"""Worked answers: the page regenerates to the checked-in copy; answers equal the literature."""

import pytest

from docs.tools import worked_answers
from tests.conftest import ROOT


@pytest.mark.parametrize(
    "title, fn", worked_answers.SECTIONS, ids=[t for t, _ in worked_answers.SECTIONS]
)
def test_answers_agree_with_the_literature(title, fn):
    answers = fn()
    assert answers
    disagree = [a.question for a in answers if a.agrees is False]
    if "Inception" in title:
        # The course's CS231n figure: its own terms sum to 271.4M, not the 358M printed.
        assert disagree == ["same with 1x1/64 reductions (and a 1x1/64 after the pool): MACs"]
        assert answers[1].ours == 28 * 28 * (3 * 64 * 256 + 128 * 256 + 192 * 9 * 64 + 96 * 25 * 64)
    else:
        assert not disagree


def test_answer_agreement_can_fail():
    assert worked_answers.Answer("x", 10, 10, "").agrees is True
    assert worked_answers.Answer("x", 10.01, 10, "").agrees is False
    assert worked_answers.Answer("x", 10.04, 10, "", rel_tol=5e-3).agrees is True
    assert worked_answers.Answer("x", 10, None, "").agrees is None


def test_nin_analysis_finds_the_compute_bottleneck_and_memory_bound_1x1_convs():
    d = worked_answers.nin_costs()
    assert d["top"].name == "block2/conv"
    memory_bound = {r.name for r, e in d["convs"] if e.bound == "memory"}
    assert memory_bound == {"block1/cccp1", "block1/cccp2", "block2/cccp1", "block2/cccp2"}
    m = d["summary"].memory
    assert m.activations > 10 * m.params


def test_checked_in_page_is_current():
    page = (ROOT / "docs" / "worked_answers.md").read_text()
    assert page == worked_answers.render(), (
        "docs/worked_answers.md is stale: "
        "python -m docs.tools.worked_answers > docs/worked_answers.md"
    )
