"""The bulletin lexicon: units, abbreviations, coordinates, hour ranges and Roman numerals that
storm, flood and public-health bulletins use, rewritten into what a presenter says.

``normalize_vi`` runs ``expand`` before it spells numbers, so every rule here leaves the digits
in place ("QL51" -> "quốc lộ 51") for the number rules to read. The rules, in order:

1. the province's own terms (``Lexicon``, loaded from the ``tts_lexicon`` file), so that a
   province can override any built-in reading;
2. numbered roads: ``QL51``, ``QL 1A``, ``QL.55`` -> "quốc lộ ...", likewise ``TL`` (tỉnh lộ),
   ``ĐT`` (đường tỉnh), ``ĐH`` (đường huyện), ``HL`` (hương lộ), only before a number that
   does not start with 0 ("ĐT 0912..." is a phone number);
3. abbreviations (``UBND``, ``HĐND``, ``TP.``, ...), whole words, exactly as written; a
   reading that opens a sentence gets a capital ("TP. Vũng Tàu" -> "Thành phố Vũng Tàu"), as
   do roads' and the province's;
4. Roman numerals after ``tháng`` and ``quý`` ("tháng IX" -> "tháng chín");
5. hour ranges ("17h–19h", "17-19h") -> "17h đến 19h" and dashes between numbers -> "-"
   (read "đến" by the number rules);
6. phone numbers typed in groups ("0254 3868 115", "0912.345.678") are joined, to be read
   digit by digit, and ``ĐT`` before one is "điện thoại";
7. coordinates written with a degree sign ("17,5°N", "110.2°E") -> "17,5 độ vĩ Bắc";
8. units after a number ("133 km/h", "250mm", "28°C") -> "133 ki-lô-mét trên giờ"; a unit
   that follows no number is left alone (an "m" in a name is not a metre).

Pure text in, text out; it never raises on any input string.
"""

from __future__ import annotations

import json
import re
import tomllib
import unicodedata
from collections.abc import Mapping
from pathlib import Path

ROADS = {"QL": "quốc lộ", "TL": "tỉnh lộ", "ĐT": "đường tỉnh", "ĐH": "đường huyện",
          "HL": "hương lộ"}

#: Abbreviations matched as written (case-sensitive), whole words.
ABBREVIATIONS = {
    "TP.HCM": "Thành phố Hồ Chí Minh",
    "TP. HCM": "Thành phố Hồ Chí Minh",
    "TP.": "thành phố",
    "TX.": "thị xã",
    "TT.": "thị trấn",
    "UBND": "Ủy ban nhân dân",
    "HĐND": "Hội đồng nhân dân",
    "MTTQ": "Mặt trận Tổ quốc",
    "BCH": "Ban Chỉ huy",
    "PCTT": "phòng, chống thiên tai",
    "TKCN": "tìm kiếm cứu nạn",
    "PCTT&TKCN": "phòng, chống thiên tai và tìm kiếm cứu nạn",
    "KTTV": "khí tượng thủy văn",
    "CSGT": "cảnh sát giao thông",
    "KCN": "khu công nghiệp",
    "THPT": "trung học phổ thông",
    "THCS": "trung học cơ sở",
    "BHYT": "bảo hiểm y tế",
    "BHXH": "bảo hiểm xã hội",
    "HCM": "Hồ Chí Minh",
    "VN": "Việt Nam",
}

#: Units read after a number (case-sensitive: "mm" is not "MM").
UNITS = {
    "km/h": "ki-lô-mét trên giờ",
    "km/giờ": "ki-lô-mét trên giờ",
    "m/s": "mét trên giây",
    "m3/s": "mét khối trên giây",
    "m³/s": "mét khối trên giây",
    "km²": "ki-lô-mét vuông",
    "km2": "ki-lô-mét vuông",
    "m²": "mét vuông",
    "m2": "mét vuông",
    "m³": "mét khối",
    "m3": "mét khối",
    "km": "ki-lô-mét",
    "cm": "xen-ti-mét",
    "mm": "mi-li-mét",
    "m": "mét",
    "ha": "héc-ta",
    "hPa": "héc-tô-pát-xcan",
    "°C": "độ C",
    "kg": "ki-lô-gam",
    "kW": "ki-lô-oát",
    "MW": "mê-ga-oát",
    "mg/l": "mi-li-gam trên lít",
}

_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9,
          "X": 10, "XI": 11, "XII": 12}

_W = r"[^\W_]"  # a letter or digit
_ROAD = re.compile(r"(?<![^\W\d_])(" + "|".join(ROADS) + r")[.\s]?(?=[1-9])")
_ROMAN_AFTER = re.compile(r"\b(tháng|quý|Tháng|Quý)\s+(" + "|".join(
    sorted(_ROMAN, key=len, reverse=True)) + r")(?![\w])")
_HOUR = r"(?:[01]?\d|2[0-4])"
_HOUR_RANGE = re.compile(rf"(?<![\w,.])({_HOUR}h(?:[0-5]\d)?)\s*[-–—]\s*({_HOUR}h(?:[0-5]\d)?)"
                         rf"(?![\w])")
_HOUR_RANGE_BARE = re.compile(rf"(?<![\w,.:])({_HOUR})\s*[-–—]\s*({_HOUR})h(?![\w])")
_PHONE = re.compile(r"(?<![\w,.])0\d{2,3}(?:[ .]\d{3,4}){2,3}(?![\w]|[.,]\d)")
_PHONE_LABEL = re.compile(r"(?<!\w)ĐT(:?\s*)(?=0\d)")
_DASH = re.compile(r"(?<=\d)\s*[–—]\s*(?=\d)")
_DEGREE_NS = {"N": "vĩ Bắc", "B": "vĩ Bắc", "S": "vĩ Nam"}
_DEGREE_EW = {"E": "kinh Đông", "Đ": "kinh Đông", "W": "kinh Tây", "T": "kinh Tây"}
# from the first digit of a run only: tried from each digit, a long run cost its length squared
_COORD = re.compile(r"(?<!\d)(\d+)(?:[.,](\d+))?\s*°\s*([NBSEĐWT])(?![\w])")
_VB_KD = re.compile(r"(?<=\d)\s*(?:độ\s+)?(VB|KĐ)(?![\w])")


def _alternation(terms: list[str]) -> str:
    return "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))


_SENTENCE_END = ".!?…"


def _starts_sentence(text: str, start: int) -> bool:
    """Whether ``start`` opens a sentence: the text's start, a new line, or after a full stop
    (or ! ? …) and a space; "UBND TP." or "(TP." do not."""
    j = start
    while j > 0 and text[j - 1].isspace():
        j -= 1
    return j == 0 or "\n" in text[j:start] or (j < start and text[j - 1] in _SENTENCE_END)


def _capital(m: re.Match[str], spoken: str) -> str:
    """``spoken`` with a capital if the match opens a sentence."""
    return spoken[:1].upper() + spoken[1:] if _starts_sentence(m.string, m.start()) else spoken


def _glue(m: re.Match[str], spoken: str) -> str:
    """``spoken`` in place of the match, spaced from letters or digits glued to it, and with
    a capital when it opens a sentence ("TP. Vũng Tàu có mưa" -> "Thành phố Vũng Tàu ...")."""
    text, start, end = m.string, m.start(), m.end()
    spoken = _capital(m, spoken)
    before = " " if start > 0 and text[start - 1].isalnum() else ""
    after = " " if end < len(text) and text[end].isalnum() else ""
    return before + spoken + after


def _whole_words(terms: Mapping[str, str], case_sensitive: bool) -> re.Pattern[str]:
    # A term ending in "." ends a word by itself ("TP.Vũng Tàu"); others need a non-letter.
    dotted = [t for t in terms if t.endswith(".")]
    plain = [t for t in terms if not t.endswith(".")]
    parts = []
    if plain:
        parts.append(rf"(?<!{_W})(?:{_alternation(plain)})(?!{_W})")
    if dotted:
        parts.append(rf"(?<!{_W})(?:{_alternation(dotted)})")
    return re.compile("|".join(parts) or r"(?!)", 0 if case_sensitive else re.IGNORECASE)


_ABBREVIATION = _whole_words(ABBREVIATIONS, case_sensitive=True)
_UNIT = re.compile(rf"(?<=\d)\s?({_alternation(list(UNITS))})(?!{_W}|/\w)")


class LexiconError(ValueError):
    """A lexicon entry or file that cannot be used; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


MAX_TERMS = 2000
MAX_TERM_CHARS = 64
MAX_SPOKEN_CHARS = 200


class Lexicon:
    """A province's own terms: ``term -> spoken form``, whole words.

    A term written all in lower case matches in any case ("xã đảo" matches "Xã Đảo"); a term
    with a capital letter matches only as written ("VT" is not "vt"). Longer terms win over
    shorter ones they contain. Terms are kept composed (NFC), as ``normalize_vi`` reads text.
    Never changed once built: the streamer swaps a whole new one in when admins edit theirs,
    while speech threads may be reading this one.
    """

    def __init__(self, terms: Mapping[str, str] | None = None) -> None:
        self.terms: dict[str, str] = {}
        for term, spoken in (terms or {}).items():
            spoken = check_entry(term, spoken)
            self.terms[unicodedata.normalize("NFC", term)] = spoken
        if len(self.terms) > MAX_TERMS:
            raise LexiconError("terms", f"{len(self.terms)} terms, over the {MAX_TERMS} limit")
        exact = {t: s for t, s in self.terms.items() if t != t.lower()}
        folded = {t.lower(): s for t, s in self.terms.items() if t == t.lower()}
        self._exact, self._folded = exact, folded
        self._exact_re = _whole_words(exact, case_sensitive=True) if exact else None
        self._folded_re = _whole_words(folded, case_sensitive=False) if folded else None

    @classmethod
    def load(cls, path: str | Path) -> Lexicon:
        """A lexicon file: TOML or JSON (by its suffix) with a ``terms`` table of
        ``"term" = "spoken form"``. Raises ``LexiconError`` naming the bad entry."""
        p = Path(path).expanduser()
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise LexiconError("tts_lexicon", f"cannot read {p}: {e.strerror or e}") from None
        try:
            data = (json.loads(raw) if p.suffix.lower() == ".json"
                    else tomllib.loads(raw.decode("utf-8")))
        except (ValueError, UnicodeDecodeError) as e:
            kind = "JSON" if p.suffix.lower() == ".json" else "TOML"
            raise LexiconError("tts_lexicon", f"{p} is not valid {kind}: {e}") from None
        terms = data.get("terms") if isinstance(data, dict) else None
        if not isinstance(terms, dict):
            raise LexiconError("terms", f"{p} needs a 'terms' table of \"term\" = \"spoken form\"")
        return cls(terms)

    def find(self, text: str) -> str | None:
        """The first of this lexicon's terms that ``text`` contains (as ``expand`` would
        match it), or None."""
        for pattern in (self._exact_re, self._folded_re):
            m = None if pattern is None else pattern.search(text)
            if m is not None:
                return m.group(0)
        return None

    def expand(self, text: str) -> str:
        if self._exact_re is not None:
            exact = self._exact
            text = self._exact_re.sub(lambda m: _glue(m, exact[m.group(0)]), text)
        if self._folded_re is not None:
            folded = self._folded
            text = self._folded_re.sub(
                lambda m: _glue(m, folded.get(m.group(0).lower(), m.group(0))), text)
        return text


def check_entry(term: object, spoken: object) -> str:
    """``spoken`` if ``term -> spoken`` is a usable entry, else ``LexiconError`` naming it."""
    field = f"terms[{str(term)[:MAX_TERM_CHARS]!r}]"
    check_term(term, field)
    return check_spoken(spoken, field)


def check_term(term: object, field: str = "term") -> None:
    """``LexiconError`` naming ``field`` unless ``term`` can be a term."""
    if not isinstance(term, str) or not term.strip():
        raise LexiconError(field, "the term is empty")
    if term != term.strip() or len(term) > MAX_TERM_CHARS:
        raise LexiconError(field, f"the term must be 1-{MAX_TERM_CHARS} characters without "
                           "leading or trailing spaces")
    if not any(c.isalpha() for c in term):
        raise LexiconError(field, "the term must contain a letter (numbers are read by the "
                           "number rules)")
    if not term.isprintable() or "  " in term:
        raise LexiconError(field, "the term must be one line of printable characters, words "
                           "one space apart (as a bulletin is typed)")
    composed = unicodedata.normalize("NFC", term)
    if not _whole_words({composed: ""}, composed != composed.lower()).search(f"x {composed} x"):
        raise LexiconError(field, "the term cannot be matched as a word in a text")


def check_spoken(spoken: object, field: str = "reading") -> str:
    """``spoken`` stripped, or ``LexiconError`` naming ``field`` unless it can be read."""
    if not isinstance(spoken, str) or not spoken.strip():
        raise LexiconError(field, "the spoken form must be a non-empty string")
    if len(spoken) > MAX_SPOKEN_CHARS:
        raise LexiconError(field, f"the spoken form is over {MAX_SPOKEN_CHARS} characters")
    return spoken.strip()


def _roman(m: re.Match[str]) -> str:
    n = _ROMAN[m.group(2)]
    lead = m.group(1)
    if lead.lower() == "tháng":
        return f"{lead} {n}"  # the month rule reads it ("tháng 4" -> "tháng tư")
    return f"{lead} {n}" if n <= 4 else m.group(0)  # a year has four quarters


def _coord(m: re.Match[str]) -> str:
    number = m.group(1) + ("," + m.group(2) if m.group(2) else "")
    axis = m.group(3)
    return f"{number} độ {_DEGREE_NS.get(axis) or _DEGREE_EW[axis]}"


def expand(text: str, lexicon: Lexicon | None = None) -> str:
    """``text`` with the lexicon's forms spelled out; digits are left for the number rules."""
    if lexicon is not None:
        text = lexicon.expand(text)
    text = _ROAD.sub(lambda m: _glue(m, ROADS[m.group(1)]), text)
    text = _ABBREVIATION.sub(lambda m: _glue(m, ABBREVIATIONS[m.group(0)]), text)
    text = _ROMAN_AFTER.sub(_roman, text)
    text = _HOUR_RANGE.sub(r"\1 đến \2", text)
    text = _HOUR_RANGE_BARE.sub(r"\1h đến \2h", text)
    text = _DASH.sub("-", text)
    text = _PHONE_LABEL.sub(lambda m: _capital(m, "điện thoại") + m.group(1), text)
    text = _PHONE.sub(lambda m: re.sub(r"[ .]", "", m.group(0)), text)
    text = _COORD.sub(_coord, text)
    text = _VB_KD.sub(lambda m: " độ " + ("vĩ Bắc" if m.group(1) == "VB" else "kinh Đông"),
                      text)
    text = _UNIT.sub(lambda m: " " + UNITS[m.group(1)], text)
    return text
