"""Devices: the built-in `local` device and SSH devices share one interface (kit.devices.base.Device);
inventories, enrolment, health checks and Ansible import live here too. Fleets (kit.fleet) build on them.

SshDevice and Deadlines load paramiko, so they are imported on first use: `import
kit.devices` (and `edgekit devices list`) stays free of it.
"""

from kit.devices.ansible import parse_ansible
from kit.devices.base import Device
from kit.devices.bench import BenchOptions, Measurement, bench
from kit.devices.entry import DeviceEntry
from kit.devices.health import DeviceCheck, check_device
from kit.devices.inventory import Inventory, connect, import_ansible
from kit.devices.local import LocalDevice

__all__ = ["BenchOptions", "Measurement", "bench", "Device", "LocalDevice", "DeviceEntry", "Inventory", "connect",
           "SshDevice", "Deadlines", "check_device", "DeviceCheck", "parse_ansible", "import_ansible"]


def __getattr__(name: str):
    if name in ("SshDevice", "Deadlines"):
        from kit.devices import ssh

        return getattr(ssh, name)
    raise AttributeError(f"module 'kit.devices' has no attribute {name!r}")
