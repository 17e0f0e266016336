"""Recipes: per-device YAML files saying how to compress and package a model for one kind of device."""

from kit.recipes.loader import (
    available_recipes, find_recipe, list_recipes, load_recipe, parse_override, recipe_dirs, shipped_dir,
)
from kit.recipes.schema import FORMATS_BY_RUNTIME, KNOWN_DEVICES, RUNTIMES, Budget, BenchSpec, InputSpec, Recipe

__all__ = [
    "Recipe", "InputSpec", "Budget", "BenchSpec", "RUNTIMES", "FORMATS_BY_RUNTIME", "KNOWN_DEVICES",
    "load_recipe", "list_recipes", "available_recipes", "find_recipe", "parse_override", "recipe_dirs", "shipped_dir",
]
