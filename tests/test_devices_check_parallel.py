"""`edgekit devices check` runs the devices at once (a bounded kit.fleet.Group), not one after
another: on 5 real sshd devices their recorded check intervals overlap."""

from __future__ import annotations

import json

import pytest
import yaml

pytestmark = pytest.mark.timeout(300)


def test_check_five_devices_in_parallel(sshd_factory, tmp_path, capsys):
    from kit.cli import main

    entries = sshd_factory(5)
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump({"devices": {e.name: {**e.to_dict(), "groups": ["lab"]} for e in entries}}))
    rc = main(["devices", "check", "lab", "--json", "--inventory", str(inv)])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["ok"], doc
    rows = doc["devices"]
    assert [r["name"] for r in rows] == [e.name for e in entries]  # the inventory's order, whatever finished first
    assert all(r["ok"] and r["info"]["arch"] for r in rows)
    # All five were in flight together: the last one started before the first one finished.
    assert max(r["started"] for r in rows) < min(r["finished"] for r in rows), rows
    assert all(r["started"] <= r["finished"] for r in rows)


def test_check_names_the_failed_device_and_checks_the_rest(sshd_factory, tmp_path, capsys):
    from kit.cli import main

    entries = sshd_factory(3)
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump({"devices": {e.name: {**e.to_dict(), "groups": ["lab"]} for e in entries}}))
    sshd_factory.server(entries[1]).stop()
    rc = main(["devices", "check", "lab", "--json", "--inventory", str(inv)])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1 and not doc["ok"]
    assert [r["ok"] for r in doc["devices"]] == [True, False, True]
    bad = doc["devices"][1]
    assert bad["error_type"] == "DeviceUnreachable" and entries[1].name in bad["error"]
