"""Accounts and transfers."""


class InsufficientFunds(Exception):
    """The account holds less than the amount asked for."""


class Account:
    def __init__(self, owner, balance=0):
        self.owner = owner
        self.balance = balance

    def deposit(self, amount):
        if amount <= 0:
            raise ValueError("amount must be positive")
        self.balance += amount

    def withdraw(self, amount):
        if amount <= 0:
            raise ValueError("amount must be positive")
        if amount > self.balance:
            raise InsufficientFunds(f"{self.owner} has {self.balance}, asked for {amount}")
        self.balance -= amount


def transfer(source, target, amount):
    """Move `amount` from `source` to `target`; nothing changes if it fails."""
    source.withdraw(amount)
    target.deposit(amount)
