"""The `edgekit` command line as a user meets it: run as a real process (the installed `edgekit`
script or `python -m kit`), with its config folder and results store in temporary folders.

What is checked: the light commands load no heavy library (torch, executorch, onnxruntime,
paramiko); piped tables keep every character; `--json` prints one parseable document; progress
lines carry no source-file suffix; errors are one line; command registration does not depend on
the order modules register in; `import kit` is lazy and every public name resolves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("torch", "executorch", "onnxruntime", "paramiko")
LIGHT_COMMANDS = [["--help"], ["recipes", "list"], ["devices", "list"], ["results", "list"],
                  ["keys", "show"]]  # signing needs no exporter: kit.package loads them on first use
SHIPPED = Path(__file__).resolve().parent.parent / "recipes"
PI5_RECIPES = sorted(p for p in SHIPPED.glob("raspberry-pi-5*.yaml"))
EDGEKIT = shutil.which("edgekit", path=str(Path(sys.executable).parent)) or shutil.which("edgekit")

# Runs main(argv) in a fresh interpreter, then writes which heavy modules got loaded to a file
# (stdout belongs to the command).
_PROBE = textwrap.dedent("""
    import json, sys
    from kit.cli import main
    out, argv = sys.argv[1], json.loads(sys.argv[2])
    rc = main(argv)
    heavy = sorted(m for m in {heavy!r} if m in sys.modules)
    open(out, "w").write(json.dumps({{"rc": rc, "heavy": heavy}}))
""").format(heavy=HEAVY)


@pytest.fixture
def env(tmp_path) -> dict:
    """The environment of a user with an empty config folder, one device and one recorded run."""
    config, results = tmp_path / "config", tmp_path / "results.db"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "EDGEKIT_RECIPES")}
    env.update(EDGEKIT_CONFIG_DIR=str(config), EDGEKIT_RESULTS=str(results))
    added = _run(["devices", "add", "pi5-lab", "10.0.0.5", "--kind", "rpi5", "--group", "lab", "--user", "pi"], env,
                 cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    from kit.results.store import ResultsStore  # sqlite only

    with ResultsStore(results) as store:
        store.finish_run(store.start_run("bench", note="cli-test run"))
    return env


def _run(argv: list[str], env: dict, cwd: Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kit", *argv], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300, **kw)


def _importers_of(module: str, argv: list[str], env: dict, cwd: Path) -> str:
    """The chain of imports that first loaded `module` (from `python -X importtime`), for a failure message."""
    code = f"import sys; from kit.cli import main; main({argv!r})"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    rows = [line.rsplit("|", 1)[-1] for line in proc.stderr.splitlines() if line.startswith("import time:")]
    for i, row in enumerate(rows):
        name = row.strip()
        if name == module or name.startswith(module + "."):
            # importtime prints a module after what it imported, one indent level deeper: walk up the levels.
            chain, depth = [name], len(row) - len(row.lstrip())
            for later in rows[i + 1:]:
                d = len(later) - len(later.lstrip())
                if d < depth:
                    chain.append(later.strip())
                    depth = d
            return " <- ".join(chain)
    return "(not found in -X importtime output)"


@pytest.mark.parametrize("argv", LIGHT_COMMANDS, ids=" ".join)
def test_light_commands_load_no_heavy_library(argv, env, tmp_path):
    out = tmp_path / "probe.json"
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(out), json.dumps(argv)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert out.is_file(), f"edgekit {' '.join(argv)} crashed: {proc.stderr[-2000:]}"
    probe = json.loads(out.read_text())
    assert probe["rc"] == 0, proc.stderr[-2000:]
    chains = {m: _importers_of(m, argv, env, tmp_path) for m in probe["heavy"]}
    assert probe["heavy"] == [], f"edgekit {' '.join(argv)} loaded {probe['heavy']}: " + "; ".join(chains.values())


@pytest.mark.parametrize("launcher", ["script", "module"])
def test_piped_recipes_list_is_not_cut(launcher, env, tmp_path):
    assert PI5_RECIPES, f"no raspberry-pi-5 recipes in {SHIPPED}"
    cmd = f"{EDGEKIT} recipes list" if launcher == "script" else f"{sys.executable} -m kit recipes list"
    assert launcher != "script" or EDGEKIT, "the edgekit script is not installed"
    proc = subprocess.run(f"{cmd} | grep raspberry-pi-5", shell=True, env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "…" not in proc.stdout
    assert max(map(len, lines)) < 1000, "rows padded out to the unbounded width"
    for recipe in PI5_RECIPES:
        row = [line for line in lines if re.search(rf"\b{re.escape(recipe.stem)}\b\s", line)]
        assert len(row) == 1, f"{recipe.stem} not found whole in:\n{proc.stdout}"
        assert str(recipe) in row[0], f"{recipe} cut in: {row[0]}"


def _rows(doc, key: str) -> list:
    """A list command's JSON: the list itself, or the list under `key`."""
    rows = doc[key] if isinstance(doc, dict) else doc
    assert isinstance(rows, list), doc
    return rows


def _json_of(argv: list[str], env: dict, cwd: Path):
    proc = _run([*argv, "--json"], env, cwd)
    assert proc.returncode == 0, proc.stderr
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise AssertionError(f"edgekit {' '.join(argv)} --json printed no single JSON document ({e}):\n{proc.stdout}")


def test_recipes_list_json(env, tmp_path):
    recipes = {r["name"]: r for r in _rows(_json_of(["recipes", "list"], env, tmp_path), "recipes")}
    assert {p.stem for p in SHIPPED.glob("*.yaml")} <= set(recipes)
    assert recipes["raspberry-pi-5-int8"]["device"] == "raspberry-pi-5"
    assert recipes["raspberry-pi-5-int8"]["runtime"] == "executorch"


def test_recipes_show_json(env, tmp_path):
    doc = _json_of(["recipes", "show", "raspberry-pi-5-int8"], env, tmp_path)
    assert doc["name"] == "raspberry-pi-5-int8"
    assert doc["device"] == "raspberry-pi-5"
    assert (doc["runtime"], doc["format"]) == ("executorch", "pte")
    assert [step["method"] for step in doc["compress"]] == ["quantize"]


def test_devices_list_json(env, tmp_path):
    devices = {d["name"]: d for d in _rows(_json_of(["devices", "list"], env, tmp_path), "devices")}
    pi = devices["pi5-lab"]
    assert (pi["host"], pi["port"], pi["user"], pi["kind"]) == ("10.0.0.5", 22, "pi", "rpi5")
    assert pi["groups"] == ["lab"]


def test_results_list_json(env, tmp_path):
    runs = _rows(_json_of(["results", "list"], env, tmp_path), "runs")
    assert [(r["kind"], r["note"]) for r in runs] == [("bench", "cli-test run")]


def test_progress_lines_have_no_source_suffix(tmp_path):
    code = textwrap.dedent("""
        from kit.cli._ui import progress_bars
        with progress_bars() as (progress, step):
            step("loading model")
            progress("calibrate", 1, 2)
            progress("calibrate", 2, 2)
            step("packaging for executorch")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "▸ loading model" in proc.stderr and "▸ packaging for executorch" in proc.stderr
    assert "calibrate" in proc.stderr
    assert not re.search(r"\.py:\d+", proc.stderr), proc.stderr
    assert proc.stdout == ""


def test_user_errors_are_one_line(env, tmp_path):
    missing = _run(["recipes", "show", "no-such-recipe"], env, tmp_path)
    assert missing.returncode != 0
    assert missing.stderr.startswith("edgekit: error: ") and missing.stderr.count("\n") == 1, missing.stderr
    assert "no-such-recipe" in missing.stderr
    usage = _run(["recipes", "list", "--no-such-option"], env, tmp_path)
    assert usage.returncode == 2
    assert usage.stderr.count("\n") == 1 and "--no-such-option" in usage.stderr, usage.stderr
    assert "edgekit recipes list --help" in usage.stderr
    verbose = _run(["--verbose", "recipes", "show", "no-such-recipe"], env, tmp_path)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr


def _command_tree(app) -> dict:
    import typer

    def walk(cmd, path):
        subs = getattr(cmd, "commands", {})
        tree = {path: sorted(subs)}
        for name, sub in subs.items():
            tree.update(walk(sub, f"{path} {name}"))
        return tree

    return walk(typer.main.get_command(app), "edgekit")


def test_registration_order_does_not_matter():
    from kit.cli import build_app, command_modules

    modules = command_modules()
    forward, backward = _command_tree(build_app(modules)), _command_tree(build_app(list(reversed(modules))))
    assert forward == backward
    assert "import-ansible" in forward["edgekit devices"]
    assert "list" in forward["edgekit recipes"] and "list" in forward["edgekit results"]


def test_import_kit_is_lazy_and_every_public_name_resolves():
    code = textwrap.dedent(f"""
        import json, sys
        import kit
        heavy_after_import = sorted(m for m in {HEAVY!r} if m in sys.modules)
        missing = []
        for name in kit.__all__:
            try:
                getattr(kit, name)
            except Exception as e:
                missing.append(f"{{name}}: {{type(e).__name__}}: {{e}}")
        import kit.package.signing, kit.search.students  # loading the subpackages must not hide the verbs
        print(json.dumps({{"heavy": heavy_after_import, "missing": missing, "dir": sorted(set(kit.__all__) - set(dir(kit))),
                           "verbs": [callable(kit.package), callable(kit.search)]}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout.splitlines()[-1])
    assert doc["heavy"] == []
    assert doc["missing"] == [], "\n".join(doc["missing"])
    assert doc["dir"] == []
    assert doc["verbs"] == [True, True]


def test_unknown_public_name_is_an_attribute_error():
    import kit

    with pytest.raises(AttributeError, match="no_such_verb"):
        kit.no_such_verb  # noqa: B018
    assert "quantize" in dir(kit) and kit.__version__
