"""Articles and number for structure names in drafted questions (pure functions).

Templates name the target through placeholders (docs/generate.md): ``{a_obj}`` ("a liver", "an
aorta", "grey matter", "kidneys"), ``{the_obj}`` ("the liver", "the grey matter ..."), ``{is}``
("is" / "are", agreeing with the name) and the bare ``{obj}``. A clinician would not write "a grey
matter" or "a lungs"; the noun's kind is read off the head of the name, the words before a
preposition ("grey matter" in "grey matter of the left half of the brain").
"""

from __future__ import annotations

import re

# Heads of names that take no indefinite article. Extend when a source names new tissue kinds.
MASS_NOUNS = frozenset(
    {
        "matter",
        "tissue",
        "fat",
        "fluid",
        "blood",
        "air",
        "oedema",
        "edema",
        "parenchyma",
        "cartilage",
        "marrow",
        "necrosis",
        "fibrosis",
        "ascites",
        "csf",
    }
)
_PREPOSITIONS = re.compile(r"\s+(?:of|in|on|at|within|around|near|between|from|with)\s+", re.IGNORECASE)
_NOT_PLURAL_ENDINGS = ("ss", "us", "is", "as", "os")
# "an" before a vowel sound: "an aorta", "an ulcer", but "a uterus", "a ureter", "a unilateral ...".
_VOWEL_SOUND = re.compile(r"^(?:[aeio]|u(?![rt]|ni|s))", re.IGNORECASE)


def head(name: str) -> str:
    """The last word before the first preposition, lower case ('grey matter of the left...' -> 'matter')."""
    core = _PREPOSITIONS.split(" ".join(name.split()), maxsplit=1)[0]
    words = core.lower().split()
    return words[-1] if words else ""


def is_mass(name: str) -> bool:
    """Whether the name's head is a mass noun ('grey matter', 'adipose tissue'): no 'a'/'an'."""
    return head(name) in MASS_NOUNS


def is_plural(name: str) -> bool:
    """Whether the name's head is a plural ('kidneys', 'lymph nodes', 'vertebrae')."""
    word = head(name)
    return (len(word) > 3 and word.endswith("s") and not word.endswith(_NOT_PLURAL_ENDINGS)) or word.endswith("ae")


def indefinite(name: str) -> str:
    """'a liver', 'an aorta', 'grey matter', 'kidneys': the name as an indefinite noun phrase."""
    if is_mass(name) or is_plural(name):
        return name
    return ("an " if _VOWEL_SOUND.match(name) else "a ") + name


def definite(name: str) -> str:
    return "the " + name


def verb_be(name: str) -> str:
    return "are" if is_plural(name) and not is_mass(name) else "is"


def name_values(name: str) -> dict[str, str]:
    """Every placeholder a template may use for the target ``name``."""
    return {"obj": name, "a_obj": indefinite(name), "the_obj": definite(name), "is": verb_be(name)}


def sentence(text: str) -> str:
    """Upper-case the first letter: a template may start with a placeholder ('{is} there ...')."""
    return text[:1].upper() + text[1:] if text else text


# A mass noun used as a noun ends its phrase ("a grey matter?", "a grey matter of ..."); one that
# modifies a following noun is a countable compound ("a white matter lesion") and is fine.
_PHRASE_END = r"(?=\s*(?:[?.,;:!)]|$)|\s+(?:of|in|on|at|within|near|around|is|are|visible|present|shown|seen)\b)"


def article_before_mass_noun(question: str, names: list[str]) -> str | None:
    """The offending phrase when the question puts 'a'/'an' before a mass-noun name ('a grey matter'),
    else None. Catches drafts from any drafter (an LLM as much as a hand-edited template)."""
    phrases = [re.escape(n) for n in names if is_mass(n)] + [r"(?:grey|gray|white)\s+matter"]
    for phrase in phrases:
        m = re.search(rf"(?<!\w)an?\s+{phrase}{_PHRASE_END}", question, re.IGNORECASE)
        if m:
            return m.group(0)
    return None
