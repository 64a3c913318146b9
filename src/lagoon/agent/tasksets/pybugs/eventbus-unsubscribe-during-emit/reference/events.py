"""A synchronous publish/subscribe bus."""


class EventBus:
    def __init__(self):
        self._handlers = {}

    def subscribe(self, event, handler):
        self._handlers.setdefault(event, []).append(handler)

    def unsubscribe(self, event, handler):
        self._handlers[event].remove(handler)

    def emit(self, event, *args):
        """Call every handler subscribed to `event` when the emit starts, in subscription order.
        Handlers may subscribe or unsubscribe handlers (themselves included) while being called."""
        for handler in list(self._handlers.get(event, [])):
            handler(*args)
