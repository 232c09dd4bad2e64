"""A generated province for the peak benchmark: districts, communes of 3–5 hamlets, bulletins.

The sample tree (``streamer/data/zones-brvt.toml``) has a dozen communes; a province has 82 to
about 300. :func:`province` builds one of any size from a seed, the same every time for the
same arguments, with Vietnamese names (ASCII keys for the zone ids), a commune code for each
commune, ten communes to a district, and the first communes of the first districts marked
coastal (the emergency's target). :func:`bulletin` writes each commune's own morning bulletin:
its name, today's date and numbers of its own, long enough to outlast a measurement. Nothing
here starts a process or reads the clock; the caller passes the date.

    python -m loadtest.province 82 > loadtest/zones-province-82.toml
"""

from __future__ import annotations

import random
import sys
import unicodedata
from dataclasses import dataclass, field
from datetime import date, timedelta

COMMUNES_PER_DISTRICT = 10
COASTAL = 20  # communes the storm warning reaches (at most a quarter of the province)
SEED = 1273
#: espeak-ng's Vietnamese voice at 150 words a minute reads about 11 characters a second
CHARS_PER_S = 11.0

_FIRST = ("Phước", "Long", "Tân", "Hòa", "Bình", "Xuân", "An", "Phú", "Mỹ", "Châu", "Kim",
          "Lộc", "Hưng", "Thạnh", "Bàu", "Sơn", "Quảng", "Nghĩa", "Đức", "Suối")
_SECOND = ("Hải", "Thành", "Lâm", "Điền", "Hiệp", "Trung", "Hội", "Mỹ", "Long", "Tân",
           "Phong", "Thuận", "Hà", "Sơn", "Bửu", "Nghệ", "Giang", "Đông", "Tây", "Nhứt")
_KINDS = ("Xã", "Xã", "Xã", "Phường", "Thị trấn")
_HAMLET = ("Ấp", "Khu phố")


@dataclass
class Commune:
    key: str
    name: str
    code: str
    district: str  # the district's key
    hamlets: list[tuple[str, str]] = field(default_factory=list)  # (key, name)
    coastal: bool = False

    def zone(self, root: str) -> str:
        return f"{root}.{self.district}.{self.key}"


@dataclass
class Province:
    root: str
    name: str
    districts: list[tuple[str, str, str]]  # (key, name, code)
    communes: list[Commune]

    @property
    def leaves(self) -> int:
        return sum(len(c.hamlets) for c in self.communes)

    def toml(self) -> str:
        """The zone file ``loa streamer --zones`` reads (format: ``streamer/zones.py``)."""
        out = [f"# A generated province: {len(self.communes)} communes of 3–5 hamlets each, "
               f"{self.leaves} channels.",
               "# Made by loadtest/province.py for loadtest/bench_peak.py; communes marked "
               "'coastal' get the storm warning.",
               "", f"[{self.root}]", f'name = "{self.name}"', 'code = "99"']
        by_district: dict[str, list[Commune]] = {}
        for c in self.communes:
            by_district.setdefault(c.district, []).append(c)
        for key, name, code in self.districts:
            out += ["", f"[{self.root}.{key}]", f'name = "{name}"', f'code = "{code}"']
            for c in by_district[key]:
                zid = c.zone(self.root)
                out += [*(["# coastal"] if c.coastal else []),
                        f"[{zid}]", f'name = "{c.name}"', f'code = "{c.code}"']
                for hkey, hname in c.hamlets:
                    out += [f"[{zid}.{hkey}]", f'name = "{hname}"']
        return "\n".join(out) + "\n"


def _key(name: str) -> str:
    """ASCII zone key for a Vietnamese name: "Phước Hải" → "phuoc-hai"."""
    plain = unicodedata.normalize("NFD", name.replace("Đ", "D").replace("đ", "d"))
    plain = "".join(ch for ch in plain if not unicodedata.combining(ch))
    return "-".join(plain.lower().split())


def province(communes: int, seed: int = SEED) -> Province:
    """A province of ``communes`` communes, 3–5 hamlets each, the same for the same seed."""
    if communes < 1:
        raise ValueError("a province has at least one commune")
    rng = random.Random(seed)
    names = [f"{a} {b}" for a in _FIRST for b in _SECOND if a != b]
    rng.shuffle(names)
    if communes + communes // COMMUNES_PER_DISTRICT + 1 > len(names):
        raise ValueError(f"at most {len(names) * 9 // 10} communes")
    n_districts = -(-communes // COMMUNES_PER_DISTRICT)
    districts = [(f"huyen-{_key(names[i])}", f"Huyện {names[i]}", f"{800 + i:03d}")
                 for i in range(n_districts)]
    coastal = min(COASTAL, communes // 4)
    out: list[Commune] = []
    for i in range(communes):
        name = names[n_districts + i]
        kind = rng.choice(_KINDS)
        hamlet = "Khu phố" if kind != "Xã" else rng.choice(_HAMLET)
        c = Commune(key=_key(name), name=f"{kind} {name}", code=f"{30000 + i:05d}",
                    district=districts[i // COMMUNES_PER_DISTRICT][0], coastal=i < coastal)
        c.hamlets = [(f"ap-{h}", f"{hamlet} {h}") for h in range(1, rng.randint(3, 5) + 1)]
        out.append(c)
    return Province("tinh", f"Tỉnh mẫu ({communes} xã)", districts, out)


def _date(d: date) -> str:
    return d.strftime("%d/%m/%Y")


def bulletin(commune: Commune, index: int, today: date, seconds: float) -> str:
    """The commune's own bulletin for ``today``, about ``seconds`` long when spoken."""
    rng = random.Random(f"{SEED}-{index}")
    n = commune.name[0].lower() + commune.name[1:]  # "xã Phước Hải" inside a sentence
    hamlets = [h for _, h in commune.hamlets]
    paragraphs = [
        lambda: f"Đài truyền thanh {n} xin thông báo. Hôm nay, ngày {_date(today)}.",
        lambda: (f"Ủy ban nhân dân {n} tổ chức tiêm chủng cho {rng.randint(40, 400)} trẻ em "
                 f"từ {rng.randint(1, 3)} đến {rng.randint(4, 6)} tuổi, lúc "
                 f"{rng.randint(7, 10)}h{rng.choice(('00', '15', '30', '45'))} ngày "
                 f"{_date(today + timedelta(days=rng.randint(1, 9)))} tại trạm y tế "
                 f"{rng.choice(hamlets)}."),
        lambda: (f"Giá lúa hôm nay là {rng.randint(60, 95) * 100} đồng một ký, giá cà phê "
                 f"{rng.randint(90, 130) * 1000} đồng một ký, giá tiêu "
                 f"{rng.randint(120, 160) * 1000} đồng một ký."),
        lambda: (f"Đến ngày {_date(today - timedelta(days=rng.randint(1, 20)))}, {n} đã thu "
                 f"{rng.randint(120, 990)} triệu đồng thuế, đạt {rng.randint(40, 99)} phần "
                 f"trăm kế hoạch năm."),
        lambda: (f"Đề nghị bà con {rng.choice(hamlets)} tham gia tổng vệ sinh từ "
                 f"{rng.randint(6, 8)}h sáng chủ nhật, ngày "
                 f"{_date(today + timedelta(days=rng.randint(1, 7)))}."),
        lambda: (f"Dự báo thời tiết: nhiệt độ từ {rng.randint(22, 26)} đến "
                 f"{rng.randint(29, 35)} độ, khả năng mưa {rng.randint(10, 90)} phần trăm, "
                 f"gió cấp {rng.randint(2, 5)}."),
        lambda: (f"Hội nông dân {n} mở lớp tập huấn trồng lúa cho {rng.randint(20, 80)} hộ, "
                 f"từ ngày {_date(today + timedelta(days=rng.randint(2, 5)))} đến ngày "
                 f"{_date(today + timedelta(days=rng.randint(6, 12)))}."),
    ]
    text: list[str] = []
    k = 0
    while sum(len(p) + 1 for p in text) < seconds * CHARS_PER_S:
        text.append(paragraphs[0]() if k == 0 else paragraphs[1 + (k - 1) % 6]())
        k += 1
    return " ".join(text)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sys.stdout.write(province(int(args[0]) if args else 82).toml())
    return 0


if __name__ == "__main__":
    sys.exit(main())
