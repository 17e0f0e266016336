"""The `edgekit` command line: parses arguments and calls the public API, nothing more.

Each module in this package that defines `register(app)` adds its commands. A module may add
commands to a group another module declares (`edgekit devices import-ansible` lives with the fleet
commands): it declares the group too, `app.add_typer(typer.Typer(), name="devices")`, and the
declarations are merged by name once every module has registered, so the order in which modules
register does not matter. Errors the user can act on come out as one line on stderr with a
non-zero exit (a traceback only with --verbose). Heavy libraries load inside the command that
needs them, never here or at a command module's top.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

try:  # typer >= 0.2x vendors its own click; older releases use the click package
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

from kit.errors import EdgeKitError


def _root(ctx: typer.Context, verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors.")):
    ctx.obj = {"verbose": verbose}


def command_modules() -> list:
    """Every module of this package with a `register(app)`, by name (the order only sets the
    order of `edgekit --help`)."""
    # A listing, not pkgutil: pkgutil's own imports cost ~10 ms of every command's start-up.
    names = sorted(f[:-3] for f in os.listdir(os.path.dirname(__file__)) if f.endswith(".py") and not f.startswith("_"))
    modules = [importlib.import_module(f"{__name__}.{name}") for name in names]
    return [m for m in modules if hasattr(m, "register")]


def build_app(modules=None) -> typer.Typer:
    """The `edgekit` app with the commands of `modules` (default: command_modules()), in any order."""
    root = typer.Typer(help="EdgeKit: compress, package, deploy and measure PyTorch models on edge devices.",
                       no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
    root.callback()(_root)
    for module in command_modules() if modules is None else modules:
        module.register(root)
    _merge_groups(root)
    return root


def _merge_groups(root: typer.Typer) -> None:
    """One group per name: the commands of every declaration of a name go to the declaration that
    gives the group its help text (exactly one may), which keeps its place in `edgekit --help`."""
    by_name: dict[str, list] = {}
    for info in root.registered_groups:
        by_name.setdefault(info.name, []).append(info)
    for name, infos in by_name.items():
        if len(infos) == 1:
            continue
        described = [i for i in infos if i.help or i.typer_instance.info.help]
        if len(described) > 1:
            raise RuntimeError(f"command group {name!r} is described by {len(described)} modules; only one may give help")
        home = (described or infos)[0]
        for other in infos:
            if other is not home:
                home.typer_instance.registered_commands.extend(other.typer_instance.registered_commands)
                home.typer_instance.registered_groups.extend(other.typer_instance.registered_groups)
                root.registered_groups.remove(other)
    for info in root.registered_groups:
        _refuse_duplicates(f"edgekit {info.name}", info.typer_instance)
    _refuse_duplicates("edgekit", root)


def _refuse_duplicates(where: str, group: typer.Typer) -> None:
    """Two modules registering the same command would silently shadow one another: refuse it."""
    names = [c.name or (c.callback.__name__.replace("_", "-") if c.callback else "") for c in group.registered_commands]
    names += [g.name for g in group.registered_groups]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RuntimeError(f"{where}: command(s) registered twice: {', '.join(twice)}")


app = build_app()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv or "-v" in argv
    try:
        # With standalone_mode=False click returns typer.Exit(code)'s code instead of raising it.
        rc = app(args=argv, prog_name="edgekit", standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except EdgeKitError as e:
        if verbose:
            raise
        print(f"edgekit: error: {e}", file=sys.stderr)
        return e.exit_code
    except click_exc.NoArgsIsHelpError as e:
        print(e.ctx.get_help() if e.ctx else "", file=sys.stderr)
        return 2
    except click_exc.UsageError as e:
        # click would print a multi-line usage panel; the contract is one line naming the fix.
        hint = f" (see '{e.ctx.command_path if e.ctx else 'edgekit'} --help')"
        print(f"edgekit: error: {' '.join(e.format_message().split())}{hint}", file=sys.stderr)
        return 2
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("edgekit: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("edgekit: interrupted", file=sys.stderr)
        return 130
