import pytest

from bank import Account, InsufficientFunds, transfer


def test_transfer():
    a, b = Account("a", 50), Account("b")
    transfer(a, b, 20)
    assert (a.balance, b.balance) == (30, 20)


def test_overdraw():
    account = Account("a", 10)
    with pytest.raises(InsufficientFunds):
        account.withdraw(11)
    assert account.balance == 10


def test_positive_amounts():
    with pytest.raises(ValueError):
        Account("a", 10).withdraw(-5)
