"""Zone ids the tests share (Bà Rịa-Vũng Tàu): a commune, its neighbour, leaves under them."""

from __future__ import annotations

#: the commune our operator runs
OP = "brvt.vung-tau.thang-tam"
#: the next commune
OTHER = "brvt.chau-duc.kim-long"
KP1 = "brvt.vung-tau.thang-tam.kp-1"
KP2 = "brvt.vung-tau.thang-tam.kp-2"
AP_TAY = "brvt.chau-duc.kim-long.ap-tay"
