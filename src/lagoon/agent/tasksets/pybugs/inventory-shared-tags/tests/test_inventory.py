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


def test_tags_belong_to_one_item():
    inv = Inventory()
    inv.add("hammer")
    inv.add("saw")
    inv.items["hammer"].tag("heavy")
    assert inv.tagged("heavy") == ["hammer"]


def test_callers_list_is_not_shared():
    inv = Inventory()
    labels = ["metal"]
    inv.add("wrench", labels)
    inv.items["wrench"].tag("small")
    assert labels == ["metal"]
