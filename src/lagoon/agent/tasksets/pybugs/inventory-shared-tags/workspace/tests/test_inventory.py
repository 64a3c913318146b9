from inventory import Inventory


def test_add_with_tags():
    inv = Inventory()
    inv.add("drill", ["power"])
    assert inv.tagged("power") == ["drill"]


def test_tag_is_not_duplicated():
    inv = Inventory()
    item = inv.add("drill", ["power"])
    item.tag("power")
    assert item.tags == ["power"]
