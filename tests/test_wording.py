"""Articles and number in drafted questions, and the lint rule against "a/an + mass noun"."""

from __future__ import annotations

import pytest

from vgmed_build.drafting.lint import LintContext, rule_article
from vgmed_build.drafting.templates import Template, load_prompts
from vgmed_build.drafting.wording import article_before_mass_noun, indefinite, verb_be


@pytest.mark.parametrize(
    "name, a_name, be",
    [
        ("liver", "a liver", "is"),
        ("aorta", "an aorta", "is"),
        ("ulcer", "an ulcer", "is"),
        ("uterus", "a uterus", "is"),  # "you-": no "an"
        ("ureter", "a ureter", "is"),
        ("grey matter", "grey matter", "is"),  # mass nouns take no article
        ("grey matter of the left half of the brain", "grey matter of the left half of the brain", "is"),
        ("adipose tissue", "adipose tissue", "is"),
        ("kidneys", "kidneys", "are"),
        ("lymph nodes of the neck", "lymph nodes of the neck", "are"),  # the head is "nodes"
        ("vertebrae", "vertebrae", "are"),
        ("pancreas", "a pancreas", "is"),  # singular despite the final s
        ("left kidney", "a left kidney", "is"),
    ],
)
def test_articles_and_number(name, a_name, be):
    assert (indefinite(name), verb_be(name)) == (a_name, be)


def test_templates_read_as_written_by_hand():
    cases = {
        ("{is} there {a_obj} in the image?", "grey matter"): "Is there grey matter in the image?",
        ("{is} there {a_obj} in the image?", "aorta"): "Is there an aorta in the image?",
        ("{is} there {a_obj} in the image?", "kidneys"): "Are there kidneys in the image?",
        ("Which side of the patient {is} {the_obj} on?", "kidneys"): "Which side of the patient are the kidneys on?",
        (
            "How many separate parts of {the_obj} are visible in this image?",
            "white matter of the left half of the brain",
        ): "How many separate parts of the white matter of the left half of the brain are visible in this image?",
    }
    for (text, name), expected in cases.items():
        assert Template("t", text).ask_about(name) == expected


def test_bundled_templates_never_put_an_article_before_a_mass_noun():
    prompts = load_prompts()
    templates = prompts.localization + prompts.position + [a.question for a in prompts.attributes.values()]
    for name in ("grey matter of the right half of the brain", "adipose tissue"):
        for tpl in templates:
            question = tpl.ask_about(name)
            assert article_before_mass_noun(question, [name]) is None, question
            assert question[0].isupper() and "{" not in question


def test_lint_rejects_a_before_a_mass_noun():
    ctx = LintContext(names=["grey matter of the left half of the brain", "left grey matter"])
    bad = {"question": "Does the image contain a grey matter of the left half of the brain?"}
    reason = "article: 'a grey matter of the left half of the brain' (a mass noun takes no 'a'/'an')"
    assert rule_article(bad, ctx) == reason
    assert rule_article({"question": "Is a white matter visible here?"}, LintContext(names=["lesion"]))
    # A mass noun modifying a countable one is fine: "a white matter lesion".
    assert rule_article({"question": "Is there a white matter lesion?"}, LintContext(names=["lesion"])) is None
    assert rule_article({"question": "Does the image contain grey matter of the left half of the brain?"}, ctx) is None
    assert rule_article({"question": "Is there a tumour in the grey matter?"}, LintContext(names=["tumour"])) is None
