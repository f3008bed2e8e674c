"""Operators: a live view of every call, the API behind it, and readiness."""

from __future__ import annotations
