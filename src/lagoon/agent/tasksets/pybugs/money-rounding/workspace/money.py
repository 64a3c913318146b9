"""Money formatting."""


def round_price(amount) -> str:
    """`amount` dollars as a string with two decimals, rounding half a cent up (2.675 -> "2.68")."""
    return f"{round(amount, 2):.2f}"


def split_bill(total, people):
    """Each person's share of `total`, as formatted prices."""
    if people <= 0:
        raise ValueError("people must be positive")
    return [round_price(total / people)] * people
