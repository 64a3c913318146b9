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


def test_withdraw_everything():
    account = Account("ann", 100)
    account.withdraw(100)
    assert account.balance == 0


def test_transfer_everything():
    a, b = Account("a", 7), Account("b", 1)
    transfer(a, b, 7)
    assert (a.balance, b.balance) == (0, 8)
