"""Turn Debian's GCIDE dictionary (package ``dict-gcide``) into a domain-labelled text corpus.

GCIDE (the 1913 Webster plus later additions) marks many senses with a domain label such as
``(Zool.)``, ``(Law)`` or ``(R. C. Ch.)``. Those labels give us, for free, short English texts
whose topic is known, which is what the domain probes need. This module streams the dictzip file,
splits it into entries and senses, cleans the dictionary markup away and maps each label to a
category from ``config/categories/gcide.yaml``.

The file format (``zcat /usr/share/dictd/gcide.dict.dz``): an entry starts with a headword line at
column 0 after a blank line; every other line of the entry is indented::

    Abdomen \\Ab*do"men\\, n. [L. abdomen (a word of uncertain
       etymol.): cf. F. abdomen.]
       1. (Anat.) The belly, or that part of the body between the
          thorax and the pelvis. ...
          [1913 Webster]

The data is hand-converted and not perfectly regular, so the rules below are heuristics that were
checked against the whole file (see tests/unit/test_gcide.py for what they promise).
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from mneme import category_file

GCIDE_PATH = Path("/usr/share/dictd/gcide.dict.dz")
DEFAULT_CATEGORIES = Path(__file__).resolve().parents[2] / "config" / "categories" / "gcide.yaml"
DEFAULT_SALT = "mneme-gcide"
MIN_WORDS = 3
_HEADER_PREFIXES = ("00-database", "00database")
# Abbreviations that make up parts of speech in the heads: "n.", "v. t.", "a. & n.", "n. pl.", ...
_POS_WORDS = frozenset(
    "n a v t i adv adj prep conj interj pron p pr pp imp pl sing prop vb superl compar pref suff "
    "suffix prefix inf pres perf pret obs int aux art def indef dem rel poss pers interrog".split()
)
_DECODE_ERRORS = "mneme-gcide-cp1252"


def _cp1252_fallback(err: UnicodeError) -> tuple[str, int]:
    """Decode a byte that is not UTF-8 as Windows-1252: a few GCIDE lines carry cp1252 quotes."""
    if not isinstance(err, UnicodeDecodeError):
        raise err
    bad = err.object[err.start : err.end]
    return bytes(bad).decode("cp1252", errors="replace"), err.end


codecs.register_error(_DECODE_ERRORS, _cp1252_fallback)


@dataclass(frozen=True)
class Sense:
    """One cleaned definition: the unit that becomes one corpus document."""

    headword: str
    pos: str
    tag: str | None
    category: str
    text: str
    sense_index: int


# --------------------------------------------------------------------------- entry splitting


def _is_headword_line(line: str) -> bool:
    """A column-0 line that can open an entry (source markers and citations also reach column 0)."""
    return bool(line) and not line[0].isspace() and not line.startswith(("[", "--", "\\", "{"))


def _headword(line: str) -> str:
    """The headword is what precedes the first pronunciation ``\\...\\`` on the headword line."""
    cut = line.find("\\")
    word = line if cut < 0 else line[:cut]
    return word.strip().rstrip(",").strip()


def _is_header(headword: str) -> bool:
    return headword.startswith(_HEADER_PREFIXES)


def iter_entries(path: str | Path) -> Iterator[tuple[str, str]]:
    """Stream ``(headword, block)`` pairs from a (dict)gzip GCIDE file, header entries skipped.

    ``block`` is the entry's full text, headword line included, trailing blank lines removed.
    An entry starts at a column-0 line that follows a blank line. The ``00-database-*`` header
    entries at the top contain free column-0 text (the licence), so until the first line with a
    pronunciation ``\\...\\`` only new ``00-database-*`` lines open an entry.
    """
    headword, block = "", []
    in_preamble, prev_blank = True, True
    with gzip.open(path, "rt", encoding="utf-8", errors=_DECODE_ERRORS) as fh:
        for raw in fh:
            line = raw.rstrip()
            if prev_blank and _is_headword_line(line):
                word = _headword(line)
                if "{" in word:
                    pass  # a wrapped line of a table inside an entry ("Barnyard grass, for hay. {Panicum ...")
                elif not in_preamble or _is_header(word) or "\\" in line:
                    yield from _finished(headword, block)
                    headword, block = word, []
                    in_preamble = in_preamble and _is_header(word)
            block.append(line)
            prev_blank = not line
    yield from _finished(headword, block)


def _finished(headword: str, block: list[str]) -> Iterator[tuple[str, str]]:
    if headword and not _is_header(headword):
        yield headword, "\n".join(block).rstrip("\n")


# --------------------------------------------------------------------------- text cleaning

# GCIDE writes accented letters as codes: ['e] = é, ["o] = ö, [=a] = ā, [e^] = ĕ, [ae] = æ.
# Inside definitions they are parts of words (Zo["o]logy, C[oe]lenterata), so they become plain
# ASCII letters before all other square-bracket spans are removed.
_ACCENT_PREFIX = re.compile(r"\[[\"'`^=~.,\-*]([A-Za-z]{1,2})\]")
_ACCENT_SUFFIX = re.compile(r"\[([A-Za-z]{1,2})[\^~=`']\]")
_ACCENT_NAMED = {
    "[ae]": "ae",
    "[AE]": "AE",
    "[oe]": "oe",
    "[OE]": "OE",
    "[imac]": "i",
    "[aum]": "a",
    "[add]": "a",
    "[asl]": "a",
    "[udd]": "u",
    "[deg]": "°",
    "[sect]": "§",
}
_ACCENT_NAMED_RE = re.compile("|".join(re.escape(k) for k in _ACCENT_NAMED))
_PRONUNCIATION = re.compile(r"\\[^\\\n]*\\")
# Run-on derived forms at the end of a definition: "-- {Li*bid"i*nous*ly}, adv.",
# "-- Co`ex*ten"sive*ness, n.", "-- {Ref`ra*ga*bil"i*ty} (-b?l`?*t?), n."
_RUN_ON = re.compile(
    r"\s*--\s*(?:\{[^{}]*\}|[^\s{}]*[*\"`][^\s{}]*)(?:\s*\([^()]*\))?\s*,?(?:\s*[a-z]{1,6}\.(?:\s*&)?)*"
)
# Any other respelling in parentheses: every word carries an accent code, "?" or a stress mark.
_RESPELL_CANDIDATE = re.compile(r"\((?=[^()]*[\[?*\"`])[^()]*\)")
_RESPELL_HINT = re.compile(r"\[[^\]\s]{1,5}\]|[?*\"`]")
_STRESS_IN_WORD = re.compile(r"(?<=[A-Za-z])[*\"`](?=[A-Za-z])")
_EMPTY_PARENS = re.compile(r"\(\s*\)")
_REPEATED_COMMA = re.compile(r",(?:\s*,)+")
_OPENING_QUOTE_SPACE = re.compile(r"(^|\s)\"\s+(?=\w)")
_INNER_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_BRACES = re.compile(r"\{([^{}]*)\}")
_STRESS = re.compile(r"[*\"`]")
# Author citations: "--Shak.", "--Bp. Hall.", "--Sir W. Scott.", "--Rev. ii. 1.", "--Farindon (1647)."
_CITATION = re.compile(
    r"(?<!\S)--[A-Z][^\s]*(?:\s+(?:[A-Z&]|\(\d|[ivxlcdm]+\.|\d|(?:of|de|du|la|le|von|van)\s)[^\s]*)*"
)
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?)])")
_REPEATED_PERIOD = re.compile(r"\.(?:\s*\.)+")


def _decode_accents(text: str) -> str:
    if "[" not in text:
        return text
    text = _ACCENT_NAMED_RE.sub(lambda m: _ACCENT_NAMED[m.group(0)], text)
    text = _ACCENT_PREFIX.sub(r"\1", text)
    return _ACCENT_SUFFIX.sub(r"\1", text)


def _drop_brackets(text: str) -> str:
    """Remove every square-bracket span (etymology, usage labels, source markers), nested ones too."""
    while "[" in text:
        reduced = _INNER_BRACKETS.sub(" ", text)
        if reduced == text:
            break
        text = reduced
    return text


def _trim_stray_brackets(text: str) -> str:
    """Cut what an unbalanced bracket (a typo in the data) would leak: ``"... slavery. WordNet 1.5]"``.

    Called after :func:`_drop_brackets`, so any bracket left has no partner; the text between it
    and the nearest sentence end on its side is the tail or head of a source marker or etymology.
    """
    while "]" in text:
        close = text.index("]")
        stop = text.rfind(". ", 0, close)
        text = text[: stop + 1] + " " + text[close + 1 :]
    while "[" in text:
        start = text.index("[")
        stop = text.find(". ", start)
        text = text[:start] + (" " + text[stop + 2 :] if stop >= 0 else "")
    return text


def _is_respelling(paren: str, allow_pos: bool = False) -> bool:
    """``(k[u^]s"t[o^]s)``, ``(-l?t)``: a pronunciation respelling, not prose in parentheses.

    ``allow_pos`` accepts a part of speech among the words, for a respelling whose ``)`` is
    missing in the data: ``(h[=e]`m[.a]*d[-i]*n[a^]m"[i^]ks or h[e^]m`[.a]*d[i^]-, n.``.
    """
    words = paren.strip("()").split()
    return bool(words) and all(
        w == "or" or _RESPELL_HINT.search(w) or (allow_pos and w.strip(",.;").lower() in _POS_WORDS)
        for w in words
    )


def _drop_respelling(match: re.Match[str]) -> str:
    return " " if _is_respelling(match.group(0)) else match.group(0)


def clean_text(text: str) -> str:
    """Strip dictionary markup from a definition and return plain prose on one line."""
    text = _PRONUNCIATION.sub(" ", text)
    if "--" in text:
        text = _RUN_ON.sub(" ", text)
    if "(" in text:
        text = _RESPELL_CANDIDATE.sub(_drop_respelling, text)
    text = _drop_brackets(_decode_accents(text))
    if "[" in text or "]" in text:
        text = _trim_stray_brackets(text)
    if "{" in text or "}" in text:
        text = _BRACES.sub(lambda m: _STRESS.sub("", m.group(1)), text)
        text = text.replace("{", "").replace("}", "")  # nested or unpaired braces
    if "--" in text:
        text = _CITATION.sub(" ", text)
    if "*" in text or '"' in text or "`" in text:
        text = _STRESS_IN_WORD.sub("", text)
    if "(" in text:
        text = _EMPTY_PARENS.sub(" ", text)
    text = _SPACES.sub(" ", text.replace("\\", ""))
    if '"' in text:
        text = _OPENING_QUOTE_SPACE.sub(r'\1"', text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    if "( " in text:
        text = text.replace("( ", "(")
    if ".." in text or ". ." in text:
        text = _REPEATED_PERIOD.sub(".", text)
    if ",," in text or ", ," in text:
        text = _REPEATED_COMMA.sub(",", text)
    return text.lstrip(" ,;:.-").rstrip(" ,;:-")


def _clean_phrase(phrase: str) -> str:
    """A braced sub-entry phrase as a headword: accents decoded, stress marks and brackets gone."""
    phrase = _drop_brackets(_decode_accents(phrase))
    return _SPACES.sub(" ", _STRESS.sub("", phrase)).strip(" ,;:.")


# --------------------------------------------------------------------------- domain tags

_TAG_CONTENT = re.compile(r"[A-Z][A-Za-z.'\s,&-]{1,45}")
_TAG_LINK_WORDS = frozenset({"&", "and", "of", "in"})
_DOTTED = re.compile(r"\.(?=\S)")


def _split_tag(content: str) -> list[str]:
    """``"Zool. & Bot."`` -> ``["Zool.", "Bot."]``; ``"Med., Surgery"`` -> ``["Med.", "Surgery"]``."""
    parts = re.split(r"\s*(?:&|,)\s*", content.strip())
    return [p for p in parts if p]


def _looks_like_tag(content: str) -> bool:
    """Domain labels are short capitalised abbreviations; ``(a)`` or a respelling are not."""
    content = content.strip()
    if _TAG_CONTENT.fullmatch(content) is None:
        return False
    words = content.replace(",", " ").split()
    return len(words) <= 5 and all(w[0].isupper() or w in _TAG_LINK_WORDS for w in words)


def _map_tag(tag: str, tag_to_category: Mapping[str, str]) -> str | None:
    """Look a label up, forgiving the spelling slips of the data ("Law.", "Med", "R.C.Ch.")."""
    found = tag_to_category.get(tag)
    if found is not None:
        return found
    bare = tag.rstrip(".")
    for variant in (bare, bare + ".", _DOTTED.sub(". ", tag), _DOTTED.sub(". ", bare + ".")):
        found = tag_to_category.get(variant)
        if found is not None:
            return found
    return None


def resolve_tag(content: str, tag_to_category: Mapping[str, str], general: str) -> tuple[str, str]:
    """Pick ``(tag, category)`` for a label: the first part that maps, else the whole label."""
    for part in _split_tag(content):
        category = _map_tag(part, tag_to_category)
        if category is not None:
            return part, category
    return _SPACES.sub(" ", content.strip()), general


def _matching_close(text: str, start: int, open_ch: str, close_ch: str) -> int:
    """Index just past the bracket closing ``text[start]``, or -1 when it never closes."""
    depth = 0
    for i in range(start, len(text)):
        ch = text[i]
        if ch == open_ch:
            depth += 1
        elif ch == close_ch:
            depth -= 1
            if depth == 0:
                return i + 1
    return -1


def _leading_tag(text: str) -> tuple[str | None, str]:
    """Split a leading domain label off a sense: ``"(Zool.) A fish"`` -> ``("Zool.", "A fish")``.

    Usage labels, etymologies and respellings before the label (``[Obs.] (Law) ...``) are skipped,
    because in the data they sit between the sense number or sub-entry phrase and the label.
    """
    pos, n = 0, len(text)
    while pos < n:
        ch = text[pos]
        if ch.isspace() or ch in ",.:;":
            pos += 1
        elif ch in "[(":
            end = _matching_close(text, pos, ch, "]" if ch == "[" else ")")
            if end < 0:
                break
            inner = _decode_accents(text[pos + 1 : end - 1])
            if ch == "(" and _looks_like_tag(inner):
                return inner.strip(), text[end:]
            if ch == "(" and not _is_respelling(text[pos:end]):
                break
            pos = end
        else:
            break
    return None, text


# --------------------------------------------------------------------------- entry head

_SENSE_NUMBER = re.compile(r" {2,4}\d{1,2}\.(?:\s|$)")
_SKIP_PARAGRAPH = re.compile(r"(?:Note|Syn|Usage)\s*[:.]")
# A part of speech opening a numbered sense: "1. n. A hard, earthy ore of iron."
_LEADING_POS = re.compile(
    r"(?:n|a|v|adj|adv|prep|conj|interj|pron|prop)\."
    r"(?:\s*&?\s*(?:n|a|v|t|i|adj|adv|pl|p|pr|prep|conj|interj|pron|prop)\.)*\s+(?=[A-Z(\[{])"
)
# A variant headword with its own pronunciation on a head line: "Aaronical \Aa*ron"ic*al\".
_VARIANT_LINE = re.compile(r"[^\\\s][^\\]{0,40}\\[^\\\s][^\\]*\\")
_PAREN_GROUP = re.compile(r"\([^()]*\)")
_POS_CUT = re.compile(r"[\[;{:]")
# A line holding only a source marker, at most followed by one stray word (the data has
# "[1913 Webster] Somberness" where the next entry's headword slipped onto the marker line).
_SOURCE_LINE = re.compile(r"\[[^\[\]]*(?:Webster|WordNet|PJC|Suppl|\bAS\b)[^\[\]]*\](?:\s+\S+)?$")
_MAX_HEAD_LINES = 40  # the longest etymologies run to ~25 lines; a runaway head would eat the entry


def _is_pos_only(text: str) -> bool:
    tokens = text.replace("&", " ").replace(",", " ").split()
    return bool(tokens) and all(tok.rstrip(".").lower() in _POS_WORDS for tok in tokens)


def _is_open(head: str, last_line: str) -> bool:
    """Is a bracket, brace, pronunciation or parenthesis of the head still waiting to close?

    Parentheses wrap to the next line ("(Physiol.\n   Chem.)", respellings), but the data also
    has ones that never close ("n. ((Zool.)"), so an unclosed "(" only holds the head open for
    the line after the one that opened it, and not when it already ended with a POS.
    """
    if head.count("[") > head.count("]") or head.count("\\") % 2 or head.rfind("{") > head.rfind("}"):
        return True
    if head.count("(") > head.count(")"):
        tail = _unclosed_paren(head)
        return (
            tail is not None
            and len(tail) <= len(last_line.strip())
            and not tail.startswith("((")
            and not _is_pos_only(tail.rsplit(",", 1)[-1])
        )
    return False


def _unclosed_paren(text: str) -> str | None:
    """The text from the last ``(`` that has no ``)``, or None."""
    stack: list[int] = []
    for i, ch in enumerate(text):
        if ch == "(":
            stack.append(i)
        elif ch == ")" and stack:
            stack.pop()
    return text[stack[-1] :] if stack else None


def _starts_with_pos(stripped: str) -> bool:
    """``"n."``, ``"prop. n. [Named after ...]"``, ``"a. (Zool.)"``: a POS that wrapped to a new line."""
    before = re.split(r"[\[(]", stripped, maxsplit=1)[0]
    return _is_pos_only(before.rstrip(" ,;"))


def _head_continues(head: str, last_line: str, line: str) -> bool:
    """Does ``line`` still belong to the entry head (respelling, etymology, part of speech, label)?"""
    stripped = line.strip()
    if not stripped or _SENSE_NUMBER.match(line):
        return False
    if _is_open(head, last_line) or stripped[0] in "[\\" or not line[0].isspace():
        return True  # column 0 inside an entry: a variant headword ("Anoplotherium")
    if _VARIANT_LINE.match(stripped):
        return True
    if stripped[0] == "{":
        return head.endswith((",", ";", "&", " or", "pl."))  # "L. pl.\n   {Abdominales}."
    if stripped[0] == "(":
        end = _matching_close(stripped, 0, "(", ")")
        group = stripped if end < 0 else stripped[:end]
        if _is_respelling(group, allow_pos=end < 0):
            return True
        after = stripped[end:].strip(" ,.;") if end > 0 else ""
        return end > 0 and _looks_like_tag(_decode_accents(group[1:-1])) and (not after or after[0] == "[")
    return _starts_with_pos(stripped)


def _head_length(lines: list[str]) -> int:
    """Number of leading lines that form the head: headword, respellings, POS, etymology, label."""
    head, n = lines[0].rstrip(), 1
    while n < len(lines) and n < _MAX_HEAD_LINES and _head_continues(head, lines[n - 1], lines[n]):
        head += " " + lines[n].strip()
        n += 1
    return n


def _part_of_speech(head: str) -> str:
    """The POS after the (last) pronunciation of the head, e.g. ``"n."``, ``"v. t."``, or ``""``."""
    tail = head[head.rfind("\\") + 1 :] if "\\" in head else head
    tail = _PAREN_GROUP.sub(" ", tail)
    tail = _POS_CUT.split(tail, maxsplit=1)[0]
    tail = _SPACES.sub(" ", tail).strip(" ,")
    return tail if _is_pos_only(tail) else ""


def _head_tag(head: str) -> str | None:
    """A label in the head applies to every sense of the entry (``... [NL.] (Zool.)``)."""
    if "(" not in head:
        return None
    text = _drop_brackets(_decode_accents(_PRONUNCIATION.sub(" ", head)))
    for group in _PAREN_GROUP.finditer(text):
        inner = group.group(0)[1:-1]
        if _looks_like_tag(inner):
            return inner.strip()
    return None


# --------------------------------------------------------------------------- entry body


def _body_chunks(lines: list[str]) -> list[tuple[str, list[str]]]:
    """Group body lines into ``("sense" | "sub", lines)`` chunks.

    Numbered senses (``1.``) start a chunk, as do braced sub-entries (``{Abdominal ring} ...``)
    that open a paragraph. Lettered sub-senses ``(a)``/``(b)`` stay inside their sense. Notes,
    synonym lists, usage essays and indented quotations are dropped: they are commentary or
    literature, not the definition, and would blur the domain signal.
    """
    chunks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    after_blank = skipping = False
    for line in lines:
        stripped = line.strip()
        if not stripped:
            after_blank = True
            continue
        indent = len(line) - len(line.lstrip())
        number = _SENSE_NUMBER.match(line)
        if number:
            current = [line[number.end() :].strip()]
            chunks.append(("sense", current))
        elif (after_blank and indent >= 8) or (stripped[0] in "NSU" and _SKIP_PARAGRAPH.match(stripped)):
            current, skipping = None, True  # a quotation with its --Author., a note, synonyms
        elif stripped[0] == "[" and _SOURCE_LINE.match(stripped):
            pass  # "[1913 Webster]", sometimes followed by a stray next headword
        elif after_blank and indent <= 4 and stripped[0] == "{":
            current = [stripped]
            chunks.append(("sub", current))
        elif current is not None:
            current.append(stripped)
        elif not chunks and (not skipping or indent <= 4):
            # The definition of an entry without numbered senses; it may follow a note that holds
            # the etymology ("Many ... Note: [It has no variation ...]").
            current, skipping = [stripped], False
            chunks.append(("sense", current))
        after_blank = False
    return chunks


def _split_subentry(raw: str) -> tuple[str, str]:
    """``"{Abdominal ring} (Anat.), a ..."`` -> ``("Abdominal ring", " (Anat.), a ...")``."""
    end = raw.find("}")
    phrase, rest = raw[1:end], raw[end + 1 :]
    while True:  # alternative phrasings: "{Abdominal ring}, or {Inguinal ring} (Anat.), ..."
        alt = re.match(r"\s*,?\s*(?:or\s+)?\{[^{}]*\}", rest)
        if alt is None:
            return _clean_phrase(phrase), rest
        rest = rest[alt.end() :]


def parse_entry(
    headword: str,
    block: str,
    tag_to_category: Mapping[str, str],
    general: str = "general",
    min_words: int = MIN_WORDS,
) -> list[Sense]:
    """Split one entry into cleaned, labelled senses.

    A sense's label is its own leading ``(Tag)``, else the label of the entry head; braced
    sub-entries become senses of their own (headword = the phrase) and use only their own label,
    since a compound like ``{Abdominal ring}`` may belong to another field than its head word.
    Lettered sub-senses stay folded into their sense unless one of them has its own label.
    Senses with fewer than ``min_words`` words after cleaning are dropped.
    """
    lines = block.split("\n")
    n_head = _head_length(lines)
    head = " ".join(line.strip() for line in lines[:n_head])
    pos, head_tag = _part_of_speech(head), _head_tag(head)
    senses: list[Sense] = []
    for kind, chunk in _body_chunks(lines[n_head:]):
        raw = " ".join(chunk)
        word, inherited, sense_pos = headword, head_tag, pos
        if kind == "sub":
            word, raw = _split_subentry(raw)
            inherited, sense_pos = None, ""
        elif own_pos := _LEADING_POS.match(raw):
            sense_pos, raw = own_pos.group(0).strip(), raw[own_pos.end() :]
        label, raw = _leading_tag(raw)
        for part_label, part in _labelled_parts(raw, label or inherited):
            text = clean_text(part)
            if not word or len(text.split()) < min_words:
                continue
            tag, category = (
                resolve_tag(part_label, tag_to_category, general) if part_label else (None, general)
            )
            senses.append(Sense(word, sense_pos, tag, category, text, len(senses) + 1))
    return senses


_LETTER_MARK = re.compile(r"(?:^|(?<=[\s.;:,]))\(([a-z])\)\s")


def _labelled_parts(raw: str, label: str | None) -> list[tuple[str | None, str]]:
    """``[(label, text)]`` for a sense: itself, or its lettered sub-senses when they are labelled.

    ``(a) (Rom. Antiq.) An unroofed space ... (b) (Eccl.) A small chapel`` holds two domains;
    folded together, the second label would sit inside the text and the sense would get the
    wrong category, so such senses are split. The text before ``(a)`` prefixes every part.
    """
    if "(a)" not in raw or "(b)" not in raw:
        return [(label, raw)]
    marks, expected = [], "a"
    for mark in _LETTER_MARK.finditer(raw):
        if mark.group(1) == expected:
            marks.append(mark)
            expected = chr(ord(expected) + 1)
    if len(marks) < 2:
        return [(label, raw)]
    prefix = raw[: marks[0].start()]
    ends = [m.start() for m in marks[1:]] + [len(raw)]
    parts = [_leading_tag(raw[m.end() : end]) for m, end in zip(marks, ends, strict=True)]
    if not any(own for own, _ in parts):
        return [(label, raw)]
    return [(own or label, f"{prefix} {text}") for own, text in parts]


def iter_senses(
    path: str | Path, tag_to_category: Mapping[str, str], general: str = "general"
) -> Iterator[Sense]:
    """Every sense of the dictionary, in file order."""
    for headword, block in iter_entries(path):
        yield from parse_entry(headword, block, tag_to_category, general)


def count_by_category(
    path: str | Path, tag_to_category: Mapping[str, str], general: str = "general"
) -> Counter[str]:
    """How many senses each category gets: the quick check that a category map is usable."""
    return Counter(sense.category for sense in iter_senses(path, tag_to_category, general))


# --------------------------------------------------------------------------- categories


def load_category_map(
    yaml_path: str | Path = DEFAULT_CATEGORIES,
) -> tuple[dict[str, str], str, dict[str, dict]]:
    """Read the category YAML: ``(tag_to_category, general_category, categories)``.

    ``categories`` maps each name to ``{"description": str, "tags": [str, ...]}``;
    ``general_category`` defaults to ``"general"`` when the file leaves it out. A file unfit for
    labelling senses (a tag listed twice would quietly move senses between categories) raises a
    ValueError naming the file and every offending key (:mod:`mneme.category_file`).
    """
    cats = category_file.load(yaml_path, "gcide")
    categories = {
        name: {"description": c.description, "tags": list(c.tags)} for name, c in cats.categories.items()
    }
    return cats.tag_to_category(), cats.general, categories


# --------------------------------------------------------------------------- splits


def validate_fractions(fractions: Mapping[str, float]) -> None:
    """Split fractions must be positive and sum to 1, else parts would overlap or leave gaps."""
    if not fractions:
        raise ValueError("split fractions are empty")
    for name, value in fractions.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"split fraction for part {name!r} is not a finite number: {value!r}")
        if value <= 0:
            raise ValueError(f"split fraction for part {name!r} must be > 0, got {value!r}")
    total = math.fsum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {total!r} over parts {list(fractions)}")


def _unit_hash(headword: str, salt: str) -> float:
    """A float in [0, 1) fixed by the headword alone (blake2b: the same on every machine and run)."""
    key = (salt + headword.lower().strip()).encode("utf-8")
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _assign(headword: str, fractions: Mapping[str, float], salt: str) -> str:
    u = _unit_hash(headword, salt)
    cumulative = 0.0
    for name, value in fractions.items():
        cumulative += value
        if u < cumulative:
            return name
    return next(reversed(fractions))  # u just under 1 when the fractions sum a hair below 1


def split_part(headword: str, fractions: Mapping[str, float], salt: str = DEFAULT_SALT) -> str:
    """Name of the part a headword belongs to, by a stable hash and cumulative ``fractions``.

    Whole headwords (case-insensitive) go to one part, so no word is seen in training and test.
    """
    validate_fractions(fractions)
    return _assign(headword, fractions, salt)


def iter_documents(
    path: str | Path,
    tag_to_category: Mapping[str, str],
    general: str,
    part: str,
    fractions: Mapping[str, float],
    salt: str = DEFAULT_SALT,
) -> Iterator[dict]:
    """Corpus documents for one split part, one per sense, in file order.

    ``doc_id`` is ``gcide:{headword}:{n}`` where ``n`` counts that headword's senses through the
    whole file (a headword can head several entries, e.g. a noun and a verb), so ids are unique.
    Bad ``fractions`` or an unknown ``part`` raise here, not at the first ``next()``.
    """
    validate_fractions(fractions)
    if part not in fractions:
        raise ValueError(f"part {part!r} is not one of the split parts {list(fractions)}")
    return _documents(path, tag_to_category, general, part, fractions, salt)


def _documents(
    path: str | Path,
    tag_to_category: Mapping[str, str],
    general: str,
    part: str,
    fractions: Mapping[str, float],
    salt: str,
) -> Iterator[dict]:
    per_headword: Counter[str] = Counter()
    for sense in iter_senses(path, tag_to_category, general):
        per_headword[sense.headword] += 1
        if _assign(sense.headword, fractions, salt) != part:
            continue
        yield {
            "doc_id": f"gcide:{sense.headword}:{per_headword[sense.headword]}",
            "source": "gcide",
            "category": sense.category,
            "title": sense.headword,
            "text": f"{sense.headword}: {sense.text}",
        }
