"""Pagination helpers."""


def page_count(total_items: int, per_page: int) -> int:
    """Number of pages needed to show `total_items` items, `per_page` at a time."""
    if per_page <= 0:
        raise ValueError("per_page must be positive")
    return total_items // per_page


def get_page(items: list, page: int, per_page: int) -> list:
    """The items on 1-based page `page`; an empty list past the last page."""
    if page < 1:
        raise ValueError("pages start at 1")
    if page > page_count(len(items), per_page):
        return []
    start = (page - 1) * per_page
    return items[start:start + per_page]
