"""Read an Ansible inventory (INI hosts file or YAML) as the kit's device entries.

    entries = parse_ansible("hosts.ini")                 # list[DeviceEntry]
    added, path = kit.devices.inventory.import_ansible("hosts.yml", inventory=None, replace=False)

What is read: hosts (with `name[01:20]` ranges and `name:port`), groups, `:children` nesting and
`:vars`, with Ansible's precedence (group vars by depth, parents before children, then host
vars). ansible_host / ansible_port / ansible_user / ansible_ssh_private_key_file /
ansible_python_interpreter (and their old ansible_ssh_* spellings) become the entry's host, port,
user, key and python; edgekit_kind / edgekit_home its kind and home; every other variable is kept
in `vars`.

Why not ansible-core's InventoryManager: ansible-core is GPL-3.0 (importing it would bind the kit
to that licence), pulls in jinja2/resolvelib and a plugin loader for ~2 MB of code, and we need
only the two static file formats, which are small and stable. Dynamic inventories (scripts,
plugins) and Jinja templates in connection variables are refused with a clear message instead.
"""

from __future__ import annotations

import re
import shlex
import string
from pathlib import Path

import yaml

from kit.devices.entry import DeviceEntry
from kit.errors import EdgeKitError

_CONN = {
    "ansible_host": "host", "ansible_ssh_host": "host",
    "ansible_port": "port", "ansible_ssh_port": "port",
    "ansible_user": "user", "ansible_ssh_user": "user",
    "ansible_ssh_private_key_file": "key", "ansible_private_key_file": "key",
    "ansible_python_interpreter": "python",
    "edgekit_kind": "kind", "device_kind": "kind", "edgekit_home": "home",
}
_IMPLICIT = ("all", "ungrouped")
_RANGE = re.compile(r"\[([0-9a-zA-Z]+):([0-9a-zA-Z]+)(?::([0-9]+))?\]")


class _Graph:
    """Groups with their hosts, vars and children, as both formats describe them."""

    def __init__(self, where: str):
        self.where = where
        self.hosts: dict[str, dict] = {}            # host -> host vars (merged)
        self.members: dict[str, set[str]] = {}      # group -> direct hosts
        self.children: dict[str, set[str]] = {}     # group -> child groups
        self.group_vars: dict[str, dict] = {}

    def group(self, name: str) -> None:
        self.members.setdefault(name, set())
        self.children.setdefault(name, set())
        self.group_vars.setdefault(name, {})

    def add_host(self, group: str, pattern: str, hvars: dict) -> None:
        self.group(group)
        for name in expand_range(pattern, self.where):
            name, port = _split_port(name)
            hv = self.hosts.setdefault(name, {})
            if port is not None:
                hv.setdefault("ansible_port", port)
            hv.update(hvars or {})
            self.members[group].add(name)

    # --- resolution ---------------------------------------------------------------------------
    def _parents(self) -> dict[str, set[str]]:
        parents: dict[str, set[str]] = {}
        for g, kids in self.children.items():
            for k in kids:
                parents.setdefault(k, set()).add(g)
        return parents

    def _depth(self, group: str, parents: dict, seen=()) -> int:
        if group in seen:
            raise EdgeKitError(f"{self.where}: group {group!r} is its own ancestor (a :children cycle); fix the nesting")
        ps = parents.get(group, set()) - {"all"}
        return 1 + max((self._depth(p, parents, (*seen, group)) for p in ps), default=0)

    def entries(self) -> list[DeviceEntry]:
        parents = self._parents()
        depth = {g: (0 if g == "all" else self._depth(g, parents)) for g in self.members}
        out = []
        for host in self.hosts:
            groups: set[str] = set()
            todo = [g for g, m in self.members.items() if host in m]
            while todo:
                g = todo.pop()
                if g not in groups:
                    groups.add(g)
                    todo.extend(parents.get(g, ()))
            merged: dict = dict(self.group_vars.get("all", {}))
            for g in sorted(groups - {"all"}, key=lambda g: (depth[g], g)):
                merged.update(self.group_vars.get(g, {}))
            merged.update(self.hosts[host])
            out.append(self._entry(host, merged, sorted(groups - set(_IMPLICIT))))
        return out

    def _entry(self, host: str, merged: dict, groups: list[str]) -> DeviceEntry:
        fields: dict = {"host": host, "groups": groups, "vars": {}}
        for key, value in merged.items():
            if key in _CONN:
                if isinstance(value, str) and ("{{" in value or "{%" in value):
                    raise EdgeKitError(f"{self.where}: host {host!r} sets {key} to a Jinja template ({value!r}); "
                                       f"templates are not evaluated on import: give the literal value")
                fields[_CONN[key]] = value
            else:
                fields["vars"][key] = value
        if "port" in fields:
            try:
                fields["port"] = int(fields["port"])
            except (TypeError, ValueError):
                raise EdgeKitError(f"{self.where}: host {host!r} has ansible_port {fields['port']!r}, not a number") from None
        return DeviceEntry.from_dict(_device_name(host, self.where), fields, self.where)


def _device_name(host: str, where: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", host).strip("-.")[:64]
    if not name:
        raise EdgeKitError(f"{where}: host {host!r} gives no usable device name")
    return name


def _split_port(name: str) -> tuple[str, int | None]:
    # "db1:2222" in a hosts line is host db1 on port 2222; an IPv6 address keeps its colons.
    if name.count(":") == 1:
        host, port = name.split(":")
        if port.isdigit():
            return host, int(port)
    return name, None


def expand_range(pattern: str, where: str = "inventory") -> list[str]:
    """Ansible host ranges: web[01:03] -> web01 web02 web03; db-[a:c] -> db-a db-b db-c; [0:10:5] strides."""
    m = _RANGE.search(pattern)
    if not m:
        return [pattern]
    lo, hi, step = m.group(1), m.group(2), int(m.group(3) or 1)
    head, tail = pattern[:m.start()], pattern[m.end():]
    if lo.isdigit() and hi.isdigit():
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        values = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1, step)]
    elif len(lo) == len(hi) == 1 and lo.isalpha() and hi.isalpha():
        letters = string.ascii_letters
        values = list(letters[letters.index(lo):letters.index(hi) + 1:step])
    else:
        raise EdgeKitError(f"{where}: host range {m.group(0)!r} in {pattern!r} is not [N:M] or [a:z]")
    if not values:
        raise EdgeKitError(f"{where}: host range {m.group(0)!r} in {pattern!r} is empty")
    return [name for v in values for name in expand_range(head + v + tail, where)]


def _ini_value(text: str):
    # Ansible reads INI values as Python literals where they parse; numbers and booleans matter here.
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    return text


def _parse_ini(text: str, where: str) -> _Graph:
    """The INI hosts format, by hand: configparser cannot read `host key=value ...` lines."""
    g = _Graph(where)
    g.group("all")
    g.group("ungrouped")
    section, kind = "ungrouped", "hosts"
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            m = re.fullmatch(r"\[([^\]:]+)(?::(vars|children))?\]", line)
            if not m:
                raise EdgeKitError(f"{where}:{lineno}: section {line!r} is not [group], [group:vars] or [group:children]")
            section, kind = m.group(1), m.group(2) or "hosts"
            g.group(section)
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:
            raise EdgeKitError(f"{where}:{lineno}: cannot split {line!r} ({e}); check the quotes") from None
        if not tokens:
            continue
        if kind == "vars":
            key, sep, value = line.partition("=")
            if not sep:
                raise EdgeKitError(f"{where}:{lineno}: [{section}:vars] line {line!r} is not key=value")
            value = value.strip()
            g.group_vars[section][key.strip()] = _ini_value(shlex.split(value)[0] if value[:1] in "'\"" else value)
        elif kind == "children":
            g.group(tokens[0])
            g.children[section].add(tokens[0])
        else:
            hvars = {}
            for tok in tokens[1:]:
                key, sep, value = tok.partition("=")
                if not sep:
                    raise EdgeKitError(f"{where}:{lineno}: host {tokens[0]!r}: {tok!r} is not key=value")
                hvars[key] = _ini_value(value)
            g.add_host(section, tokens[0], hvars)
    # Hosts named in any group other than 'ungrouped' are not ungrouped.
    grouped = set().union(*(m for name, m in g.members.items() if name not in _IMPLICIT))
    g.members["ungrouped"] -= grouped
    return g


def _parse_yaml(doc: dict, where: str) -> _Graph:
    g = _Graph(where)

    def walk(name: str, body, seen: tuple):
        if name in seen:
            raise EdgeKitError(f"{where}: group {name!r} is its own ancestor (a children cycle); fix the nesting")
        g.group(name)
        if body is None:
            return
        if not isinstance(body, dict):
            raise EdgeKitError(f"{where}: group {name!r} must be a mapping with hosts/vars/children")
        extra = set(body) - {"hosts", "vars", "children"}
        if extra:
            raise EdgeKitError(f"{where}: group {name!r} has unknown key(s) {', '.join(sorted(extra))}; "
                               f"use hosts, vars and children")
        for host, hvars in (body.get("hosts") or {}).items():
            if hvars is not None and not isinstance(hvars, dict):
                raise EdgeKitError(f"{where}: host {host!r} in group {name!r}: its variables must be a mapping")
            g.add_host(name, str(host), hvars or {})
        g.group_vars[name].update(body.get("vars") or {})
        for child, sub in (body.get("children") or {}).items():
            g.children[name].add(str(child))
            walk(str(child), sub, (*seen, name))

    for name, body in doc.items():
        walk(str(name), body, ())
    return g


def parse_ansible(path: str | Path) -> list[DeviceEntry]:
    """The devices an Ansible INI or YAML inventory describes, as DeviceEntry objects."""
    path = Path(path)
    if path.is_dir():
        raise EdgeKitError(f"{path}: is a folder; name the inventory file itself (hosts, hosts.yml)")
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise EdgeKitError(f"{path}: no such Ansible inventory file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeKitError(f"{path}: cannot read ({e})") from None
    if text.startswith("#!"):
        raise EdgeKitError(f"{path}: a dynamic inventory script; run it with --list and import a static file instead")
    where = str(path)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    if path.suffix in (".yml", ".yaml", ".json") or first == "---" or re.fullmatch(r"[A-Za-z0-9_.-]+:", first):
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise EdgeKitError(f"{path}: not valid YAML ({' '.join(str(e).split())[:160]})") from None
        if not isinstance(doc, dict):
            raise EdgeKitError(f"{path}: an Ansible YAML inventory is a mapping of groups (usually 'all:')")
        if "plugin" in doc:
            raise EdgeKitError(f"{path}: an inventory plugin config ({doc['plugin']}); export a static inventory "
                               f"(ansible-inventory -i {path.name} --list -y) and import that")
        graph = _parse_yaml(doc, where)
    else:
        graph = _parse_ini(text, where)
    entries = graph.entries()
    names = [e.name for e in entries]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise EdgeKitError(f"{path}: hosts map to the same device name(s) {', '.join(dupes)}; rename them")
    if not entries:
        raise EdgeKitError(f"{path}: no hosts found")
    return entries
