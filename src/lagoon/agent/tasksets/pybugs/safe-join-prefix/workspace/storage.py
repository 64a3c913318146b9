"""Storing user files under a root directory."""

import os


class UnsafePath(ValueError):
    """A user-supplied path would leave the storage root."""


def safe_join(root, relative):
    """Join the user-supplied `relative` path onto `root`, refusing anything that would leave `root`."""
    if os.path.isabs(relative):
        raise UnsafePath(relative)
    path = os.path.normpath(os.path.join(root, relative))
    if not path.startswith(root):
        raise UnsafePath(relative)
    return path
