"""Devices: the built-in `local` device and SSH devices share one interface (kit.devices.base.Device);
inventories, enrolment and Ansible import live here too. Fleets (kit.fleet) build on them."""

from kit.devices.ansible import import_ansible, parse_ansible
from kit.devices.bench import BenchOptions, Measurement, bench
from kit.devices.inventory import DeviceEntry, Inventory, connect
from kit.devices.local import LocalDevice
from kit.devices.ssh.transport import Deadlines, SshDevice, check_device

__all__ = ["BenchOptions", "Measurement", "bench", "LocalDevice", "DeviceEntry", "Inventory", "connect", "SshDevice",
           "Deadlines", "check_device", "parse_ansible", "import_ansible"]
