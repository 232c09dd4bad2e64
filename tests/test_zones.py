"""The zone tree: any depth, loaded from data, bad files refused with the reason."""

import pytest

from streamer.zones import ZoneError, ZoneTree


def test_sample_tree_has_any_depth():
    t = ZoneTree.load()
    assert t.roots == ["brvt"]
    # Côn Đảo: clusters directly under the district-level unit (depth 3), elsewhere depth 4
    assert t.leaves("brvt.con-dao") == [f"brvt.con-dao.cum-{i}" for i in (1, 2, 3)]
    assert t.leaves("brvt.chau-duc.kim-long.ap-tay") == ["brvt.chau-duc.kim-long.ap-tay"]
    assert len(t.leaves("brvt")) == len(t.channels()) == 30
    assert t.contains("brvt.chau-duc", "brvt.chau-duc.kim-long") and not t.contains(
        "brvt.chau", "brvt.chau-duc")


@pytest.mark.parametrize("text, words", [
    ("", "no zone"),
    ("[a]\nname = 1", "name must be a string"),
    ("[a]\nx = 1", "unexpected key"),
    ("[A]\nname='x'", "must be a zone table"),
    ("[a.B]\nname='x'", "bad child key"),
    ("[a\n", "not valid TOML"),
])
def test_bad_zone_files_are_refused_with_the_reason(text, words):
    with pytest.raises(ZoneError, match=words):
        ZoneTree.from_toml(text)
