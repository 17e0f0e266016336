"""Fleets: many devices at once (Group -> GroupResult), staged rollouts with canaries, rollbacks and
their persisted state. Builds on kit.devices."""

from kit.fleet.group import Group, GroupResult
from kit.fleet.group_ops import fleet_status, rollback_group
from kit.fleet.options import RolloutOptions
from kit.fleet.rollout import RolloutResult, rollout
from kit.fleet.session import Retry, Session

__all__ = ["Group", "GroupResult", "Retry", "Session", "RolloutOptions", "RolloutResult", "rollout", "fleet_status",
           "rollback_group"]
