"""The trainer's input error, in a module of its own so light commands (``kubeloop
predict``) can raise it without importing pandas."""

from __future__ import annotations


class DataError(Exception):
    """Data that cannot be used; the message names the column and the problem."""
