"""The `edgekit` command line: parses arguments and calls the public API, nothing more.

Each module in this package that defines `register(app)` adds its commands; errors the user can
act on come out as one line on stderr with a non-zero exit (a traceback only with --verbose).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

try:  # typer >= 0.2x vendors its own click; older releases use the click package
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover
    from click import exceptions as click_exc

from kit.errors import EdgeKitError

app = typer.Typer(help="EdgeKit: compress, package, deploy and measure PyTorch models on edge devices.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


@app.callback()
def _root(ctx: typer.Context, verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks on errors.")):
    ctx.obj = {"verbose": verbose}


def _register_all() -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{mod.name}")
        if hasattr(module, "register"):
            module.register(app)


_register_all()


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
        hint = f" (see 'edgekit {e.ctx.info_name if e.ctx and e.ctx.parent else ''} --help')".replace("edgekit  ", "edgekit ")
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
