"""Vietnamese spelling of numbers, dates, times and percentages, one table per rule."""

from __future__ import annotations

import pytest

from streamer.mixer.vi_text import month_to_vi, normalize_vi, number_to_vi

NUMBERS = [
    (0, "không"),
    (1, "một"),
    (4, "bốn"),
    (5, "năm"),
    (10, "mười"),
    (11, "mười một"),
    (14, "mười bốn"),
    (15, "mười lăm"),
    (20, "hai mươi"),
    (21, "hai mươi mốt"),
    (24, "hai mươi tư"),
    (25, "hai mươi lăm"),
    (99, "chín mươi chín"),
    (100, "một trăm"),
    (101, "một trăm linh một"),
    (105, "một trăm linh năm"),
    (110, "một trăm mười"),
    (115, "một trăm mười lăm"),
    (121, "một trăm hai mươi mốt"),
    (1000, "một nghìn"),
    (1005, "một nghìn không trăm linh năm"),
    (1010, "một nghìn không trăm mười"),
    (1100, "một nghìn một trăm"),
    (2026, "hai nghìn không trăm hai mươi sáu"),
    (10_000, "mười nghìn"),
    (15_500, "mười lăm nghìn năm trăm"),
    (1_000_000, "một triệu"),
    (1_000_005, "một triệu không trăm linh năm"),
    (1_010_000, "một triệu không trăm mười nghìn"),
    (2_500_000, "hai triệu năm trăm nghìn"),
    (1_234_567, "một triệu hai trăm ba mươi tư nghìn năm trăm sáu mươi bảy"),
    (1_000_000_000, "một tỷ"),
    (3_000_000_021, "ba tỷ không trăm hai mươi mốt"),
    (1_005_000_000, "một tỷ không trăm linh năm triệu"),
    (5_000_000_000_000, "năm nghìn tỷ"),
    (-7, "âm bảy"),
    (-2026, "âm hai nghìn không trăm hai mươi sáu"),
]


@pytest.mark.parametrize("n, words", NUMBERS)
def test_number_to_vi(n: int, words: str) -> None:
    assert number_to_vi(n) == words


@pytest.mark.parametrize(
    "month, words",
    [(1, "một"), (2, "hai"), (4, "tư"), (5, "năm"), (10, "mười"), (11, "mười một"),
     (12, "mười hai")],
)
def test_month_to_vi(month: int, words: str) -> None:
    assert month_to_vi(month) == words


TEXTS = [
    # dates with a year: dd/mm/yyyy, d/m/yyyy, dd-mm-yyyy; "ngày" is not doubled
    ("22/11/2026", "ngày hai mươi hai tháng mười một năm hai nghìn không trăm hai mươi sáu"),
    ("1/4/2025", "ngày một tháng tư năm hai nghìn không trăm hai mươi lăm"),
    ("22-11-2026", "ngày hai mươi hai tháng mười một năm hai nghìn không trăm hai mươi sáu"),
    ("ngày 05/04/2026", "ngày năm tháng tư năm hai nghìn không trăm hai mươi sáu"),
    ("Ngày 2/9/1945.", "Ngày hai tháng chín năm một nghìn chín trăm bốn mươi lăm."),
    # dates without a year, month and year, a month alone
    ("họp ngày 15/8", "họp ngày mười lăm tháng tám"),
    ("từ 30/4 đến 1/5", "từ ngày ba mươi tháng tư đến ngày một tháng năm"),
    ("tháng 11/2026", "tháng mười một năm hai nghìn không trăm hai mươi sáu"),
    ("trong tháng 4 này", "trong tháng tư này"),
    # impossible dates are left as numbers
    ("32/13/2026", "ba mươi hai/mười ba/hai nghìn không trăm hai mươi sáu"),
    # times: HH:MM, HH:MM:SS, HHhMM, HHh
    ("17:30", "mười bảy giờ ba mươi phút"),
    ("lúc 07:05 sáng", "lúc bảy giờ năm phút sáng"),
    ("17:00", "mười bảy giờ"),
    ("08:05:09", "tám giờ năm phút chín giây"),
    ("17h30", "mười bảy giờ ba mươi phút"),
    ("17h", "mười bảy giờ"),
    ("lúc 7h tối", "lúc bảy giờ tối"),
    ("0h15", "không giờ mười lăm phút"),
    # decimals with a comma, thousands with dots
    ("3,5", "ba phẩy năm"),
    ("0,05", "không phẩy không năm"),
    ("1.000.000", "một triệu"),
    ("giá 25.000 đồng", "giá hai mươi lăm nghìn đồng"),
    ("1.250.000,5", "một triệu hai trăm năm mươi nghìn phẩy năm"),
    # percentages
    ("50%", "năm mươi phần trăm"),
    ("giảm 12,5 %", "giảm mười hai phẩy năm phần trăm"),
    ("tăng 100%.", "tăng một trăm phần trăm."),
    # negatives, ranges, plain numbers, codes
    ("-5 độ", "âm năm độ"),
    ("từ 10-12 người", "từ mười đến mười hai người"),
    ("năm 2026", "năm hai nghìn không trăm hai mươi sáu"),
    ("gọi 0912345678", "gọi không chín một hai ba bốn năm sáu bảy tám"),
    # units are read by the bulletin lexicon (tests/test_vi_lexicon.py), spaced from the words
    ("60km/h", "sáu mươi ki-lô-mét trên giờ"),
    ("5 kg", "năm ki-lô-gam"),
    ("5 gói", "năm gói"),
    # text without numbers is unchanged
    ("Xin chào bà con", "Xin chào bà con"),
    ("", ""),
]


@pytest.mark.parametrize("text, spoken", TEXTS)
def test_normalize_vi(text: str, spoken: str) -> None:
    assert normalize_vi(text) == spoken


def test_normalize_vi_whole_bulletin() -> None:
    text = "Thông báo: lúc 17h30 ngày 22/11/2026 họp thôn, 95% hộ đã đóng 1.500.000 đồng."
    assert normalize_vi(text) == (
        "Thông báo: lúc mười bảy giờ ba mươi phút ngày hai mươi hai tháng mười một năm hai "
        "nghìn không trăm hai mươi sáu họp thôn, chín mươi lăm phần trăm hộ đã đóng một triệu "
        "năm trăm nghìn đồng."
    )


def test_normalize_vi_leaves_no_digits_in_ordinary_text() -> None:
    text = "Ngày 3/2, 14h, 7 thôn, 12,5%, 1.000 người, -3 độ, 2:15, 01/01/2027, tháng 12/2026"
    assert not any(c.isdigit() for c in normalize_vi(text))
