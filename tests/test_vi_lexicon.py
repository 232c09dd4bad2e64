"""The bulletin lexicon (streamer/mixer/vi_lexicon.py) through ``normalize_vi``: storm, flood
and public-health bulletins in the style of the national forecasting centre's, read exactly
as a presenter would; and a province's own terms from a file, validated by name."""

from __future__ import annotations

import json
import time
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.mixer.vi_lexicon import Lexicon, LexiconError
from streamer.mixer.vi_text import normalize_vi

BULLETINS = [
    # a storm at sea: coordinates in words, wind force and speed range, distance
    ("Hồi 13 giờ ngày 05/9, vị trí tâm bão ở vào khoảng 17,5 độ Vĩ Bắc; 110,2 độ Kinh Đông, "
     "cách đảo Hải Nam (Trung Quốc) khoảng 200 km về phía Nam. Sức gió mạnh nhất vùng gần tâm "
     "bão mạnh cấp 12 (118-133 km/h), giật cấp 15. Dự báo trong 24 giờ tới, bão di chuyển theo "
     "hướng Tây Tây Bắc, mỗi giờ đi được 15-20 km.",
     "Hồi mười ba giờ ngày năm tháng chín, vị trí tâm bão ở vào khoảng mười bảy phẩy năm độ Vĩ "
     "Bắc; một trăm mười phẩy hai độ Kinh Đông, cách đảo Hải Nam (Trung Quốc) khoảng hai trăm "
     "ki-lô-mét về phía Nam. Sức gió mạnh nhất vùng gần tâm bão mạnh cấp mười hai (một trăm "
     "mười tám đến một trăm ba mươi ba ki-lô-mét trên giờ), giật cấp mười lăm. Dự báo trong hai "
     "mươi tư giờ tới, bão di chuyển theo hướng Tây Tây Bắc, mỗi giờ đi được mười lăm đến hai "
     "mươi ki-lô-mét."),
    # heavy rain: an en dash range, a glued unit, roads, the people's committee, an hour range
    ("Từ đêm 05/9 đến hết ngày 07/9, khu vực từ Thanh Hóa đến Quảng Trị có mưa to đến rất to "
     "với tổng lượng mưa phổ biến 150–250 mm, có nơi trên 400mm. Cảnh báo nguy cơ lũ quét, sạt "
     "lở đất ở vùng núi. UBND tỉnh yêu cầu tạm dừng lưu thông qua QL1A đoạn đèo Ngang và QL 12A "
     "từ 17h–19h.",
     "Từ đêm năm tháng chín đến hết ngày bảy tháng chín, khu vực từ Thanh Hóa đến Quảng "
     "Trị có mưa to đến rất to với tổng lượng mưa phổ biến một trăm năm mươi đến hai trăm năm "
     "mươi mi-li-mét, có nơi trên bốn trăm mi-li-mét. Cảnh báo nguy cơ lũ quét, sạt lở đất ở "
     "vùng núi. Ủy ban nhân dân tỉnh yêu cầu tạm dừng lưu thông qua quốc lộ một A đoạn đèo "
     "Ngang và quốc lộ mười hai A từ mười bảy giờ đến mười chín giờ."),
    # an urgent storm bulletin: degree-sign coordinates (comma and point), pressure, TP.,
    # the committee for disaster prevention, the people's council
    ("Bản tin bão khẩn cấp: hồi 4 giờ ngày 28/10, vị trí tâm bão ở vào khoảng 15,2°N; "
     "112.5°E. Áp suất khí quyển ở tâm bão 965 hPa. Vùng biển ven bờ từ TP. Đà Nẵng đến Quảng "
     "Ngãi có gió mạnh cấp 8-9, sóng biển cao 4-6 m. Ban Chỉ huy PCTT&TKCN tỉnh đề nghị HĐND "
     "các huyện theo dõi sát diễn biến.",
     "Bản tin bão khẩn cấp: hồi bốn giờ ngày hai mươi tám tháng mười, vị trí tâm bão ở vào "
     "khoảng mười lăm phẩy hai độ vĩ Bắc; một trăm mười hai phẩy năm độ kinh Đông. Áp suất khí "
     "quyển ở tâm bão chín trăm sáu mươi lăm héc-tô-pát-xcan. Vùng biển ven bờ từ thành phố Đà "
     "Nẵng đến Quảng Ngãi có gió mạnh cấp tám đến chín, sóng biển cao bốn đến sáu mét. Ban Chỉ "
     "huy phòng, chống thiên tai và tìm kiếm cứu nạn tỉnh đề nghị Hội đồng nhân dân các huyện "
     "theo dõi sát diễn biến."),
    # public health: Roman month and quarter, °C, a grouped phone number, office hours
    ("Thông báo của UBND xã Long Hải: theo Sở Y tế, số ca sốt xuất huyết tháng IX tăng 35% so "
     "với quý III năm trước. Nhiệt độ cao nhất 35°C. Đề nghị bà con diệt lăng quăng, liên hệ "
     "trạm y tế ĐT 0254 3868 115 từ 7h30-11h hằng ngày.",
     "Thông báo của Ủy ban nhân dân xã Long Hải: theo Sở Y tế, số ca sốt xuất huyết tháng chín "
     "tăng ba mươi lăm phần trăm so với quý ba năm trước. Nhiệt độ cao nhất ba mươi lăm độ C. "
     "Đề nghị bà con diệt lăng quăng, liên hệ trạm y tế điện thoại không hai năm bốn ba tám sáu "
     "tám một một năm từ bảy giờ ba mươi phút đến mười một giờ hằng ngày."),
]


@pytest.mark.parametrize("text, spoken", BULLETINS)
def test_bulletin_is_read_as_a_presenter_would(text: str, spoken: str) -> None:
    assert normalize_vi(text) == spoken


FORMS = [
    # roads: only before a number, never a phone number (the text's start is a sentence's)
    ("QL51", "Quốc lộ năm mươi mốt"),
    ("QL.55 và TL 44", "Quốc lộ năm mươi lăm và tỉnh lộ bốn mươi tư"),
    ("ĐT741", "Đường tỉnh bảy trăm bốn mươi mốt"),
    ("ĐT: 0912.345.678", "Điện thoại: không chín một hai ba bốn năm sáu bảy tám"),
    ("QL", "QL"),
    # abbreviations: whole words, as written
    ("về TP.Vũng Tàu", "về thành phố Vũng Tàu"),
    ("TP.HCM", "Thành phố Hồ Chí Minh"),
    ("UBND", "Ủy ban nhân dân"),
    ("ubnd", "ubnd"),
    # a reading that opens a sentence (the text's start, after a full stop, a new line) gets
    # a capital; in mid-sentence it does not
    ("TP. Vũng Tàu có mưa", "Thành phố Vũng Tàu có mưa"),
    ("Trời mưa. TP. Vũng Tàu ngập", "Trời mưa. Thành phố Vũng Tàu ngập"),
    ("Cảnh báo!\nQL51 ngập", "Cảnh báo!\nQuốc lộ năm mươi mốt ngập"),
    ("UBND TP. Vũng Tàu", "Ủy ban nhân dân thành phố Vũng Tàu"),
    ("(TP. Bà Rịa)", "(thành phố Bà Rịa)"),
    # a date after a time of day reads as after "ngày"
    ("đêm 05/9", "đêm năm tháng chín"),
    ("Sáng 22/11/2026", "Sáng hai mươi hai tháng mười một năm hai nghìn không trăm hai mươi sáu"),
    ("trưa 1/4, chiều 2/4 và tối 30/4", "trưa một tháng tư, chiều hai tháng tư và tối ba mươi "
     "tháng tư"),
    ("ngày 05/9", "ngày năm tháng chín"),
    ("UBNDX", "UBNDX"),
    # Roman numerals after tháng and quý; a quarter beyond IV is left alone
    ("tháng IV", "tháng tư"),
    ("Tháng XII", "Tháng mười hai"),
    ("quý IV", "quý bốn"),
    ("quý V", "quý V"),
    ("Khóa IX", "Khóa IX"),
    # hours and ranges
    ("17-19h", "mười bảy giờ đến mười chín giờ"),
    ("từ 8h - 10h30", "từ tám giờ đến mười giờ ba mươi phút"),
    # coordinates
    ("10,5°N; 107,1°E", "mười phẩy năm độ vĩ Bắc; một trăm linh bảy phẩy một độ kinh Đông"),
    ("17,5 VB", "mười bảy phẩy năm độ vĩ Bắc"),
    # units: only after a number
    ("lũ 1.200 m3/s", "lũ một nghìn hai trăm mét khối trên giây"),
    ("gió 10 m/s", "gió mười mét trên giây"),
    ("mực nước 3,5m", "mực nước ba phẩy năm mét"),
    ("5 ha lúa", "năm héc-ta lúa"),
    ("2 hay 3", "hai hay ba"),
    ("m và mm", "m và mm"),
    ("12 mmHg", "mười hai mmHg"),
]


@pytest.mark.parametrize("text, spoken", FORMS)
def test_lexicon_form(text: str, spoken: str) -> None:
    assert normalize_vi(text) == spoken


def test_province_terms_from_a_toml_file(tmp_path) -> None:
    path = tmp_path / "brvt.toml"
    path.write_text('[terms]\n"BR-VT" = "Bà Rịa – Vũng Tàu"\n"KCN" = "cụm công nghiệp"\n'
                    '"xã đảo" = "xã đảo Long Sơn"\n', "utf-8")
    lexicon = Lexicon.load(path)
    # a capitalised term matches as written only; a lower-case one in any case; a province's
    # term wins over the built-in one
    assert normalize_vi("Tỉnh BR-VT, br-vt, KCN Phú Mỹ 3, Xã Đảo", lexicon) == (
        "Tỉnh Bà Rịa – Vũng Tàu, br-vt, cụm công nghiệp Phú Mỹ ba, xã đảo Long Sơn")
    assert normalize_vi("KCN", None) == "Khu công nghiệp"


def test_province_terms_from_a_json_file(tmp_path) -> None:
    path = tmp_path / "brvt.json"
    path.write_text(json.dumps({"terms": {"Hồ Tràm": "Hồ Tràm resort"}}), "utf-8")
    assert normalize_vi("về Hồ Tràm", Lexicon.load(path)) == "về Hồ Tràm resort"


@pytest.mark.parametrize("terms, field, says", [
    ({"": "x"}, "terms['']", "empty"),
    ({" UBND": "x"}, "terms[' UBND']", "leading or trailing"),
    ({"123": "x"}, "terms['123']", "contain a letter"),
    ({"VT": ""}, "terms['VT']", "spoken form"),
    ({"VT": 5}, "terms['VT']", "spoken form"),
    ({"VT": "x" * 201}, "terms['VT']", "over 200"),
    ({"BCH  PCTT": "x"}, "terms['BCH  PCTT']", "one space apart"),
    ({"BCH\nPCTT": "x"}, "terms['BCH\\nPCTT']", "one line"),
])
def test_bad_entries_are_refused_by_name(terms, field, says) -> None:
    with pytest.raises(LexiconError) as e:
        Lexicon(terms)
    assert e.value.field == field
    assert says in str(e.value)


def test_bad_files_are_refused_clearly(tmp_path) -> None:
    with pytest.raises(LexiconError, match="cannot read"):
        Lexicon.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("terms = [", "utf-8")
    with pytest.raises(LexiconError, match="not valid TOML"):
        Lexicon.load(bad)
    flat = tmp_path / "flat.json"
    flat.write_text('{"UBND": "x"}', "utf-8")
    with pytest.raises(LexiconError, match="'terms' table"):
        Lexicon.load(flat)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"terms": {"VT": ["x"]}}', "utf-8")
    with pytest.raises(LexiconError) as e:
        Lexicon.load(wrong)
    assert e.value.field == "terms['VT']"


def test_terms_and_text_are_compared_composed() -> None:
    """A term typed with decomposed accents (NFD) matches a bulletin typed composed (NFC),
    and the other way round."""
    nfc, nfd = "Long Hải", unicodedata.normalize("NFD", "Long Hải")
    assert nfc != nfd
    assert normalize_vi(f"xã {nfc}", Lexicon({"Hải": "Hải X"})) == "xã Long Hải X"
    assert normalize_vi(f"xã {nfc}", Lexicon({nfd: "Long Hải Y"})) == "xã Long Hải Y"
    assert normalize_vi(f"xã {nfd}", Lexicon({nfc: "Long Hải Z"})) == "xã Long Hải Z"


PIECES = ["QL", "ĐT", "UBND", "TP.", "tháng ", "quý ", "IX", "IV", "°", "N", "E", "VB", "km/h",
          "mm", "m", "h", "–", "-", "/", ".", ",", " ", "0", "1", "5", "17", "2026", "İ", "ß",
          "xã đảo", "Xã Đảo", "br-vt", "%", ":"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=30).map("".join))
def test_normalize_vi_never_raises(text: str) -> None:
    lexicon = Lexicon({"xã đảo": "xã đảo Long Sơn", "BR-VT": "Bà Rịa – Vũng Tàu",
                       "i̇": "i chấm"})
    assert isinstance(normalize_vi(text, lexicon), str)


def test_a_long_run_of_digits_costs_no_more_than_its_length() -> None:
    """Found by the API's schemathesis run: the coordinate rule tried each digit of a run as
    its start, so 3,000 digits took 0.3 s of the streamer's event loop (``POST
    /tts/normalize``) and 20,000 about 15 s; read in one pass, 20,000 take milliseconds."""
    started = time.process_time()
    text = normalize_vi("0" * 20_000 + " 10,5°N")
    assert time.process_time() - started < 1.0
    assert text.endswith("mười phẩy năm độ vĩ Bắc"), text[-40:]
