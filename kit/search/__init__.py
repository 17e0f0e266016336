"""Searches over recipes and student architectures, measured on a device."""

from kit.search.recipes import search
from kit.search.students import student_search

__all__ = ["search", "student_search"]
