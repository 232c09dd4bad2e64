"""Vietnamese text normalisation for TTS: numbers, dates, times and percentages become words.

A bulletin typed by a commune officer ("Họp lúc 17h30 ngày 22/11/2026, giảm 50%") must be read
the way a presenter would read it, whatever voice synthesises it, so the spelling is done here
and not left to each engine. Pure text in, text out: it never touches audio or the network,
never raises on any input string, and leaves alone what it does not recognise. Units,
abbreviations, coordinates and hour ranges are the bulletin lexicon's (``vi_lexicon.py``),
applied first.
"""

from __future__ import annotations

import re
import unicodedata

from streamer.mixer.vi_lexicon import Lexicon, expand

_DIGITS = ("không", "một", "hai", "ba", "bốn", "năm", "sáu", "bảy", "tám", "chín")
_GROUPS = ("", "nghìn", "triệu")
_BILLION = 1_000_000_000
# Longer digit runs are codes or phone numbers, not quantities: read them digit by digit.
_MAX_QUANTITY_DIGITS = 15


def _three_digits(n: int, full: bool) -> list[str]:
    """Words for 0 < n < 1000; ``full`` when a higher group precedes it (say "không trăm")."""
    hundreds, rest = divmod(n, 100)
    tens, units = divmod(rest, 10)
    words: list[str] = []
    if hundreds or full:
        words += [_DIGITS[hundreds], "trăm"]
    if tens == 0:
        if units:
            # "linh" bridges the empty tens after a spoken hundreds: 105 = một trăm linh năm.
            words += ["linh", _DIGITS[units]] if words else [_DIGITS[units]]
    elif tens == 1:
        words.append("mười")
        if units:
            words.append("lăm" if units == 5 else _DIGITS[units])
    else:
        words += [_DIGITS[tens], "mươi"]
        if units:
            words.append({1: "mốt", 4: "tư", 5: "lăm"}.get(units, _DIGITS[units]))
    return words


def _positive(n: int, full: bool) -> list[str]:
    if n >= _BILLION:
        high, low = divmod(n, _BILLION)
        billions = _positive(high, full) + ["tỷ"]
        return billions + _positive(low, True) if low else billions
    words: list[str] = []
    for scale in (2, 1, 0):
        group = n // 1000**scale % 1000
        if group:
            words += _three_digits(group, full or bool(words))
            if _GROUPS[scale]:
                words.append(_GROUPS[scale])
    return words


def number_to_vi(n: int) -> str:
    """Spell an integer in Vietnamese: 2026 -> "hai nghìn không trăm hai mươi sáu".

    Written by hand because num2words' Vietnamese drops the zero hundreds ("hai nghìn lẻ hai
    mươi sáu" for 2026), which is not how a number is read on air.
    """
    if n < 0:
        return "âm " + number_to_vi(-n)
    if n == 0:
        return _DIGITS[0]
    return " ".join(_positive(n, False))


def _digits_to_vi(digits: str) -> str:
    return " ".join(_DIGITS[int(d)] for d in digits)


def month_to_vi(month: int) -> str:
    """1..12 -> "một".."mười hai", with April read "tư" as in "tháng tư"."""
    return "tư" if month == 4 else number_to_vi(month)


def _integer_to_vi(digits: str) -> str:
    if len(digits) > 1 and digits.startswith("0") or len(digits) > _MAX_QUANTITY_DIGITS:
        return _digits_to_vi(digits)
    return number_to_vi(int(digits))


def _decimal_to_vi(integer: str, fraction: str | None) -> str:
    words = _integer_to_vi(integer.replace(".", ""))
    if fraction:
        # The fraction is read as a number after its leading zeros: 3,05 = ba phẩy không năm.
        stripped = fraction.lstrip("0")
        zeros = len(fraction) - len(stripped)
        words += " phẩy " + " ".join(
            filter(None, [_digits_to_vi("0" * zeros), _integer_to_vi(stripped) if stripped else ""])
        )
    return words


_B = r"(?<![\w.,/:-])"  # not glued to a preceding number, word or separator
_E = r"(?![\w/:]|[.,-]\d)"  # nor to a following one

#: words a date follows as "ngày" does: "đêm 05/9" is "đêm năm tháng chín", not "đêm ngày ..."
_DATE_LEAD = r"(?:\b(ngày|đêm|sáng|trưa|chiều|tối)\s+)?"
_DATE_DMY = re.compile(
    rf"{_DATE_LEAD}{_B}(\d{{1,2}})([/-])(\d{{1,2}})\3(\d{{4}}){_E}", re.IGNORECASE
)
_DATE_MY = re.compile(rf"\b(tháng)\s+(\d{{1,2}})/(\d{{4}}){_E}", re.IGNORECASE)
_DATE_DM = re.compile(rf"{_DATE_LEAD}{_B}(\d{{1,2}})/(\d{{1,2}}){_E}", re.IGNORECASE)
_MONTH = re.compile(rf"\b(tháng)\s+(\d{{1,2}}){_E}", re.IGNORECASE)
_TIME = re.compile(
    rf"{_B}([01]?\d|2[0-3])(?::([0-5]\d)(?::([0-5]\d))?|[hH]([0-5]\d)?){_E}"
)
_PERCENT = re.compile(rf"{_B}(-?)(\d{{1,3}}(?:\.\d{{3}})+(?!\d)|\d+)(?:,(\d+))?\s?%")
_RANGE = re.compile(r"(?<=\d)\s?-\s?(?=\d)")
_NUMBER = re.compile(r"(?:(?<![\w.,])-)?(\d{1,3}(?:\.\d{3})+(?!\d)|\d+)(?:,(\d+))?")
_SPACES = re.compile(r"[ \t]{2,}")


def _valid_day_month(day: str, month: str) -> bool:
    return 1 <= int(day) <= 31 and 1 <= int(month) <= 12


def _date_dmy(m: re.Match[str]) -> str:
    day, month, year = m.group(2), m.group(4), m.group(5)
    if not _valid_day_month(day, month):
        return m.group(0)
    lead = m.group(1) or "ngày"
    return (
        f"{lead} {number_to_vi(int(day))} tháng {month_to_vi(int(month))}"
        f" năm {number_to_vi(int(year))}"
    )


def _date_my(m: re.Match[str]) -> str:
    month, year = int(m.group(2)), int(m.group(3))
    if not 1 <= month <= 12:
        return m.group(0)
    return f"{m.group(1)} {month_to_vi(month)} năm {number_to_vi(year)}"


def _date_dm(m: re.Match[str]) -> str:
    day, month = m.group(2), m.group(3)
    if not _valid_day_month(day, month):
        return m.group(0)
    return f"{m.group(1) or 'ngày'} {number_to_vi(int(day))} tháng {month_to_vi(int(month))}"


def _month(m: re.Match[str]) -> str:
    month = int(m.group(2))
    return f"{m.group(1)} {month_to_vi(month)}" if 1 <= month <= 12 else m.group(0)


def _time(m: re.Match[str]) -> str:
    hour, minute_colon, second, minute_h = m.groups()
    minute = minute_colon or minute_h
    words = f"{number_to_vi(int(hour))} giờ"
    if minute and (int(minute) or second):
        words += f" {number_to_vi(int(minute))} phút"
    if second and int(second):
        words += f" {number_to_vi(int(second))} giây"
    return words


def _percent(m: re.Match[str]) -> str:
    sign = "âm " if m.group(1) else ""
    return f"{sign}{_decimal_to_vi(m.group(2), m.group(3))} phần trăm"


def _number(m: re.Match[str]) -> str:
    sign = "âm " if m.group(0).startswith("-") else ""
    words = sign + _decimal_to_vi(m.group(1), m.group(2))
    # Keep a space between the words and a glued unit or word: 60km/h -> "sáu mươi km/h".
    text, start, end = m.string, m.start(), m.end()
    before = " " if start > 0 and text[start - 1].isalpha() else ""
    after = " " if end < len(text) and text[end].isalpha() else ""
    return before + words + after


def normalize_vi(text: str, lexicon: Lexicon | None = None) -> str:
    """``text`` with the bulletin lexicon (and the province's ``lexicon``) expanded, and
    numbers, dates, times and percentages spelled as Vietnamese words. The text is composed
    (NFC) first: a bulletin pasted with decomposed accents still matches the lexicon's terms."""
    text = expand(unicodedata.normalize("NFC", text), lexicon)
    # Most specific first: once a date is words, the time and number rules cannot misread it.
    text = _DATE_DMY.sub(_date_dmy, text)
    text = _DATE_MY.sub(_date_my, text)
    text = _DATE_DM.sub(_date_dm, text)
    text = _MONTH.sub(_month, text)
    text = _TIME.sub(_time, text)
    text = _PERCENT.sub(_percent, text)
    text = _RANGE.sub(" đến ", text)
    text = _NUMBER.sub(_number, text)
    return _SPACES.sub(" ", text).strip()
