"""Detect patient identifiers in text that is about to be (or has been) released.

Two kinds of check: patterns that DICOM identifying data takes (UIDs, DA dates, PN person names,
the keywords and tags of identifying attributes), and exact strings a maintainer forbids (a forbid
file, e.g. the names and IDs of the patients in the source data). Messages never repeat the match,
so the report itself cannot leak what it found.

Also the ids the build derives from what it holds (:func:`stable_id`, :func:`item_pseudonym`): hashes,
so the same input always gets the same id and no id shows the path or name it was made from.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from vgmed_build.errors import VgmedError

MIN_FORBIDDEN_LENGTH = 3
WITH_PATHS_HINT = "source paths hidden in shared output; --with-paths shows them"


def stable_id(*parts: object) -> str:
    """The id of an image, region or draft: a hash of what it is made of (source, item, slice, label,
    question type, ...), the same at every rerun, so reruns upsert instead of duplicating."""
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def item_pseudonym(source: str, item: str) -> str:
    """A stable stand-in for a source item's path in output meant to be shared.

    Folder and file names of clinical data often carry patient names or record numbers
    (``Smith_John_MRN4455/``); the catalog keeps them on the site, exports show this instead.
    """
    return "item-" + hashlib.sha256(f"{source}|{item}".encode("utf-8", "surrogateescape")).hexdigest()[:10]


def add_with_paths_arg(p) -> None:
    """The ``--with-paths`` option of every command whose output may be shared."""
    p.add_argument(
        "--with-paths",
        action="store_true",
        help="show source item paths (file and folder names, which may carry patient names) instead of "
        "stable pseudonyms (item-xxxxxxxxxx); only for output that stays on the site",
    )

# (description, pattern). Boundaries exclude hex ids, hashes and decimals (".20190412" in a float).
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("a DICOM UID", re.compile(r"(?<![\w.])[012](?:\.(?:0|[1-9]\d*)){4,}(?!\w)(?!\.\d)")),
    (
        "a DICOM date (YYYYMMDD)",
        re.compile(r"(?<![\w.])(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?!\w)(?!\.\d)"),
    ),
    # A name (letters, spaces, "'" and "-") before a '^' and a letter or '^' after it. Linear time: a
    # match may begin only where such a run begins (the lookbehind) and the run is taken whole
    # (possessive), so a long run without '^' is read once, not once per letter; the reported
    # column is that of the run's first letter (group "at"), as ``[A-Za-z][A-Za-z' -]*\^[A-Za-z^]``.
    (
        "a DICOM person name (FAMILY^GIVEN)",
        re.compile(r"(?<![A-Za-z' -])[' -]*+(?P<at>[A-Za-z][A-Za-z' -]*+)\^[A-Za-z^]"),
    ),
    (
        "the keyword of an identifying DICOM attribute",
        re.compile(
            r"\b(?:PatientName|PatientID|PatientBirthDate|PatientAddress|OtherPatientIDs|OtherPatientNames|"
            r"AccessionNumber|InstitutionName|InstitutionAddress|ReferringPhysicianName|StudyDate|"
            r"StudyInstanceUID|SeriesInstanceUID|SOPInstanceUID|StudyID)\b"
        ),
    ),
    ("a DICOM patient-module tag (0010,xxxx)", re.compile(r"\(0010,\s*[0-9A-Fa-f]{4}\)")),
]


@dataclass(frozen=True)
class Forbidden:
    """A forbidden string and where it was defined (for messages that do not echo it).

    It matches case-insensitively where it is not part of a longer word or number: the character
    before and after a match must not continue it (a letter next to a letter, a digit next to a
    digit), so ``Doe`` finds ``Doe_Jane`` and ``Jane Doe`` but not ``Does``, and ``4455`` finds
    ``MRN4455``. A ``*`` at either end lifts that side's boundary (``*hansen`` finds ``Johansen``).
    """

    text: str
    origin: str

    def _parts(self) -> tuple[str, bool, bool]:
        core = self.text.removeprefix("*").removesuffix("*")
        return core, self.text.startswith("*"), self.text.endswith("*") and len(self.text) > 1

    @property
    def pattern(self) -> re.Pattern[str]:
        core, open_start, open_end = self._parts()
        before = "" if open_start else _boundary(core[0], behind=True)
        after = "" if open_end else _boundary(core[-1], behind=False)
        return re.compile(before + re.escape(core) + after, re.IGNORECASE)

    def byte_patterns(self) -> list[re.Pattern[bytes]]:
        """The same rule on raw bytes, for the UTF-8 and Latin-1 spellings (ASCII letters and digits
        are the ones that continue a word there)."""
        core, open_start, open_end = self._parts()
        before = b"" if open_start else _boundary(core[0], behind=True).encode()
        after = b"" if open_end else _boundary(core[-1], behind=False).encode()
        spellings = {core.encode("utf-8"), core.encode("latin-1", errors="ignore")}
        return [re.compile(before + re.escape(s) + after, re.IGNORECASE) for s in spellings if s]


def _boundary(char: str, behind: bool) -> str:
    """A lookaround refusing a neighbour that would continue ``char``'s word or number."""
    cls = "0-9" if char.isdigit() else "A-Za-z" if char.isascii() and char.isalpha() else ""
    if not cls and char.isalpha():
        return r"(?<![^\W\d_])" if behind else r"(?![^\W\d_])"  # any (Unicode) letter continues a word
    if not cls:
        return ""  # punctuation or a space ends a word by itself
    return f"(?<![{cls}])" if behind else f"(?![{cls}])"


class ForbidFileError(VgmedError, ValueError):
    """The forbid file cannot be used."""


def load_forbid_file(path: str | Path) -> list[Forbidden]:
    """One forbidden string per line; blank lines and lines starting with '#' are ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ForbidFileError(f"{path}: cannot read forbid file ({exc})") from exc
    out = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if len(text.strip("*")) < MIN_FORBIDDEN_LENGTH:
            raise ForbidFileError(
                f"{path}:{number}: forbidden strings need at least {MIN_FORBIDDEN_LENGTH} characters "
                "(shorter ones would match almost any text)"
            )
        out.append(Forbidden(text, f"{path.name}:{number}"))
    return out


def find_patterns(text: str) -> list[str]:
    """Descriptions of the identifier patterns found in ``text`` (with the column, not the match)."""
    found = []
    for description, pattern in PATTERNS:
        match = pattern.search(text)
        if match:
            start = match.start("at") if "at" in pattern.groupindex else match.start()
            found.append(f"looks like {description} at column {start + 1}")
    return found


def find_forbidden(text: str, forbidden: list[Forbidden]) -> list[str]:
    """Messages for each forbidden string occurring in ``text`` (see :class:`Forbidden`)."""
    return [f"contains the forbidden string from {f.origin}" for f in forbidden if f.pattern.search(text)]


def find_forbidden_bytes(data: bytes, forbidden: list[Forbidden]) -> list[str]:
    """Like :func:`find_forbidden` on raw bytes (UTF-8 and Latin-1 spellings, ASCII case-insensitive)."""
    return [
        f"contains the forbidden string from {f.origin}"
        for f in forbidden
        if any(p.search(data) for p in f.byte_patterns())
    ]
