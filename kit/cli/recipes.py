"""`edgekit recipes list|show`: the per-device recipes found, as tables, YAML or JSON."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.syntax import Syntax
from rich.table import Table

from kit.cli._ui import print_json, stdout


def _listing(device: Optional[str]) -> list[dict]:
    """One dict per recipe found (invalid ones with their error), filtered by device kind."""
    from kit.recipes import list_recipes

    out = []
    for name, path, recipe in list_recipes():
        if isinstance(recipe, Exception):
            out.append({"name": name, "file": str(path), "error": str(recipe)})
            continue
        if device and recipe.device != device:
            continue
        doc = recipe.summary()
        out.append({"name": name, "file": str(path), "device": recipe.device, "runtime": recipe.runtime,
                    "format": recipe.format, "threads": recipe.threads,
                    "chain": [step.get("method", "?") for step in doc.get("compress") or []],
                    "budget_top1_drop": recipe.budget.top1_drop, "error": None})
    return out


def register(app: typer.Typer) -> None:
    recipes_app = typer.Typer(help="Per-device recipes: how to compress and package for one kind of device.",
                              no_args_is_help=True)
    app.add_typer(recipes_app, name="recipes")

    @recipes_app.command("list")
    def list_cmd(device: Optional[str] = typer.Option(None, "--device", help="Only recipes for this device kind."),
                 as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of a table.")):
        """List the recipes found (./recipes, $EDGEKIT_RECIPES, the config folder, the shipped ones)."""
        rows = _listing(device)
        if as_json:
            print_json(rows)
            return
        table = Table(title="EdgeKit recipes")
        for col in ("name", "device", "runtime", "format", "threads", "chain", "budget", "file"):
            table.add_column(col)
        for r in rows:
            if r["error"]:
                table.add_row(r["name"], "", "", "", "", f"[red]invalid: {r['error']}", "", r["file"])
                continue
            budget = "" if r["budget_top1_drop"] is None else f"-{r['budget_top1_drop']:g} pt"
            table.add_row(r["name"], r["device"], r["runtime"], r["format"], str(r["threads"]),
                          " -> ".join(r["chain"]) or "(none)", budget, r["file"])
        stdout.print(table)

    @recipes_app.command("show")
    def show_cmd(name: str = typer.Argument(..., help="Recipe name or file."),
                 set_: List[str] = typer.Option([], "--set", help="Override a field: key=value (dotted path)."),
                 as_json: bool = typer.Option(False, "--json", help="Print JSON instead of YAML.")):
        """Show a recipe after inheritance and overrides, validated."""
        import yaml

        from kit.recipes import load_recipe

        recipe = load_recipe(name, set_)
        doc = recipe.model_dump(mode="json", exclude_none=True)
        if as_json:
            print_json(doc)
            return
        stdout.print(f"# {recipe.name} from {recipe.source}")
        stdout.print(Syntax(yaml.safe_dump(doc, sort_keys=False), "yaml"))
