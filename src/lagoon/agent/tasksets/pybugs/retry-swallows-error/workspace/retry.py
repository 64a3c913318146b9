"""Retrying flaky calls."""

import functools
import time


def retry(attempts=3, exceptions=(Exception,), delay=0.0, sleep=time.sleep):
    """Call the decorated function up to `attempts` times while it raises one of `exceptions`,
    sleeping `delay` seconds between attempts. If every attempt fails, the last exception propagates.
    Exceptions not listed propagate at once."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for attempt in range(attempts):
                try:
                    return fn(*args, **kwargs)
                except exceptions:
                    if attempt < attempts - 1:
                        sleep(delay)
            return None

        return wrapper

    return decorate
