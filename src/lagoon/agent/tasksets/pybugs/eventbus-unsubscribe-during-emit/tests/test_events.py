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


def test_unsubscribe_during_emit():
    bus, seen = EventBus(), []

    def once(payload):
        seen.append(("once", payload))
        bus.unsubscribe("saved", once)

    bus.subscribe("saved", once)
    bus.subscribe("saved", lambda payload: seen.append(("audit", payload)))
    bus.emit("saved", 1)
    bus.emit("saved", 2)
    assert seen == [("once", 1), ("audit", 1), ("audit", 2)]


def test_subscribe_during_emit_waits_for_next_emit():
    bus, seen = EventBus(), []

    def adder(payload):
        seen.append(("adder", payload))
        bus.subscribe("e", lambda p: seen.append(("late", p)))

    bus.subscribe("e", adder)
    bus.emit("e", 1)
    assert seen == [("adder", 1)]
