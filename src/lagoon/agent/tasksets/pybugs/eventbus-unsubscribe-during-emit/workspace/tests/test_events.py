from events import EventBus


def test_order():
    bus, seen = EventBus(), []
    bus.subscribe("e", lambda x: seen.append(("first", x)))
    bus.subscribe("e", lambda x: seen.append(("second", x)))
    bus.emit("e", 7)
    assert seen == [("first", 7), ("second", 7)]


def test_unsubscribe():
    bus, seen = EventBus(), []
    handler = seen.append
    bus.subscribe("e", handler)
    bus.unsubscribe("e", handler)
    bus.emit("e", 1)
    assert seen == []


def test_unknown_event():
    EventBus().emit("nothing")
