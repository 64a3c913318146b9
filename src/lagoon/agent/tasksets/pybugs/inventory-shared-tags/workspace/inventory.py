"""A tiny tool inventory with tags."""


class Item:
    def __init__(self, name, tags=[]):
        self.name = name
        self.tags = tags

    def tag(self, label):
        if label not in self.tags:
            self.tags.append(label)


class Inventory:
    def __init__(self):
        self.items = {}

    def add(self, name, tags=None):
        item = Item(name, tags) if tags is not None else Item(name)
        self.items[name] = item
        return item

    def tagged(self, label):
        """Names of the items carrying `label`, sorted."""
        return sorted(name for name, item in self.items.items() if label in item.tags)
