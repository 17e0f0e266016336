"""Devices and transports: the built-in `local` device and SSH devices share one interface;
inventories, staged rollouts and rollbacks build on them."""

from kit.fleet.ansible import import_ansible, parse_ansible
from kit.fleet.bench import BenchOptions, Measurement, bench
from kit.fleet.inventory import DeviceEntry, Inventory, connect
from kit.fleet.local import LocalDevice
from kit.fleet.rollout import RolloutOptions, RolloutResult, fleet_status, rollback_group, rollout
from kit.fleet.transport import Deadlines, SshDevice, check_device

__all__ = ["BenchOptions", "Measurement", "bench", "LocalDevice", "DeviceEntry", "Inventory", "connect", "SshDevice",
           "Deadlines", "check_device", "RolloutOptions", "RolloutResult", "rollout", "fleet_status", "rollback_group",
           "parse_ansible", "import_ansible"]
