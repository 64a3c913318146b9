import pytest

from retry import retry


def test_succeeds_after_failures():
    calls = []

    @retry(attempts=3, sleep=lambda s: None)
    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ValueError("not yet")
        return "ok"

    assert flaky() == "ok" and len(calls) == 3


def test_unlisted_exceptions_propagate_at_once():
    calls = []

    @retry(attempts=5, exceptions=(ValueError,), sleep=lambda s: None)
    def broken():
        calls.append(1)
        raise KeyError("x")

    with pytest.raises(KeyError):
        broken()
    assert len(calls) == 1
