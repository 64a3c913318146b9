"""Small dense matrices as lists of rows."""


def transpose(rows):
    """The transpose of a rectangular matrix given as a list of equally long rows."""
    return [[rows[i][j] for i in range(len(rows))] for j in range(len(rows))]


def matmul(a, b):
    """The product of matrices `a` (n x m) and `b` (m x p)."""
    columns = transpose(b)
    return [[sum(x * y for x, y in zip(row, column)) for column in columns] for row in a]
