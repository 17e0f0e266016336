"""Ansible inventory import (INI and YAML) into the kit's inventory."""

from __future__ import annotations

import pytest
import yaml

from kit.errors import EdgeKitError
from kit.devices.ansible import expand_range, parse_ansible
from kit.devices.inventory import Inventory, import_ansible

INI = """\
# lab fleet
gateway ansible_host=10.0.0.1

[pis]
pi[01:03] ansible_user=pi
pi-special ansible_host=10.0.0.50 ansible_port=2202 ansible_ssh_private_key_file=~/.ssh/pi_key threads=2

[jetsons]
jet1:2223 ansible_host=10.0.1.1 edgekit_kind=jetson-orin

[arm:children]
pis
jetsons

[arm:vars]
ansible_user=edge
cooldown_c=60

[pis:vars]
edgekit_kind=rpi5
"""

YAML = """\
all:
  vars:
    ansible_python_interpreter: /usr/bin/python3
  hosts:
    standalone:
      ansible_host: 192.168.1.9
  children:
    canary:
      hosts:
        board-a: {ansible_host: 192.168.1.10, ansible_port: 2222, ansible_user: root}
    boards:
      vars: {ansible_user: ops, edgekit_kind: rk3588}
      hosts:
        board-a:
        board-[b:c]:
"""


def test_ini_hosts_groups_children_vars_and_precedence(tmp_path):
    f = tmp_path / "hosts"
    f.write_text(INI)
    by = {e.name: e for e in parse_ansible(f)}
    assert sorted(by) == ["gateway", "jet1", "pi-special", "pi01", "pi02", "pi03"]
    assert by["gateway"].host == "10.0.0.1" and by["gateway"].groups == []
    # host var beats group vars; child group ([pis:vars]) beats parent ([arm:vars])
    assert by["pi01"].user == "pi" and by["pi01"].kind == "rpi5" and by["pi01"].host == "pi01"
    assert sorted(by["pi01"].groups) == ["arm", "pis"]
    assert by["pi01"].vars == {"cooldown_c": 60}
    sp = by["pi-special"]
    assert (sp.host, sp.port, sp.user, sp.key) == ("10.0.0.50", 2202, "edge", "~/.ssh/pi_key")
    assert sp.vars["threads"] == 2
    assert (by["jet1"].port, by["jet1"].kind, by["jet1"].user) == (2223, "jetson-orin", "edge")


def test_yaml_inventory(tmp_path):
    f = tmp_path / "inv.yml"
    f.write_text(YAML)
    by = {e.name: e for e in parse_ansible(f)}
    assert sorted(by) == ["board-a", "board-b", "board-c", "standalone"]
    a = by["board-a"]
    # both appearances of board-a merge; host vars beat the group's
    assert (a.host, a.port, a.user, a.kind) == ("192.168.1.10", 2222, "root", "rk3588")
    assert sorted(a.groups) == ["boards", "canary"]
    assert by["board-b"].user == "ops" and by["board-b"].python == "/usr/bin/python3"


def test_import_into_kit_inventory_is_all_or_nothing(tmp_path):
    inv_path = tmp_path / "devices.yaml"
    f = tmp_path / "hosts.ini"
    f.write_text(INI)
    added, path = import_ansible(f, inv_path)
    assert path == inv_path and len(added) == 6
    inv = Inventory.load(inv_path)
    assert [e.name for e in inv.select("arm")] == ["jet1", "pi-special", "pi01", "pi02", "pi03"] or \
        sorted(e.name for e in inv.select("arm")) == ["jet1", "pi-special", "pi01", "pi02", "pi03"]
    before = inv_path.read_text()
    with pytest.raises(EdgeKitError, match="already in the inventory.*--replace"):
        import_ansible(f, inv_path)
    assert inv_path.read_text() == before
    import_ansible(f, inv_path, replace=True)
    assert yaml.safe_load(inv_path.read_text())["devices"]["pi01"]["user"] == "pi"


@pytest.mark.parametrize("text,suffix,match", [
    ("[web\nhost1\n", ".ini", r"hosts.ini:1: section"),
    ("[web]\nhost1 ansible_port=abc\n", ".ini", "ansible_port 'abc', not a number"),
    ("[web]\nhost1 ansible_host='{{ lookup(\"env\", \"X\") }}'\n", ".ini", "Jinja template"),
    ("[a:children]\nb\n[b:children]\na\n[b]\nh1\n", ".ini", "cycle"),
    ("#!/usr/bin/env python\nprint(1)\n", ".ini", "dynamic inventory script"),
    ("plugin: aws_ec2\n", ".yml", "inventory plugin"),
    ("all: [1, 2\n", ".yml", "not valid YAML"),
    ("[web]\nhost1 broken\n", ".ini", "'broken' is not key=value"),
])
def test_bad_inventories_get_one_line_errors(tmp_path, text, suffix, match):
    f = tmp_path / f"hosts{suffix}"
    f.write_text(text)
    with pytest.raises(EdgeKitError, match=match) as e:
        parse_ansible(f)
    assert "\n" not in str(e.value)


def test_ranges():
    assert expand_range("web[01:03].lab") == ["web01.lab", "web02.lab", "web03.lab"]
    assert expand_range("n[0:10:5]") == ["n0", "n5", "n10"]
    assert expand_range("r[a:c]-[1:2]") == ["ra-1", "ra-2", "rb-1", "rb-2", "rc-1", "rc-2"]
    with pytest.raises(EdgeKitError, match="is not"):
        expand_range("x[1:b]")


def test_cli_import_ansible(tmp_path, capsys):
    from kit.cli import main

    f = tmp_path / "hosts"
    f.write_text(INI)
    inv = tmp_path / "devices.yaml"
    assert main(["devices", "import-ansible", str(f), "--inventory", str(inv)]) == 0
    assert "pi-special" in capsys.readouterr().out
    assert main(["devices", "import-ansible", str(f), "--inventory", str(inv)]) == 2
    assert "--replace" in capsys.readouterr().err
