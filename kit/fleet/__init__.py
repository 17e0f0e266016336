"""Fleets: many devices at once (Group -> GroupResult), staged rollouts with canaries, rollbacks and
their persisted state. Builds on kit.devices."""

from kit.fleet.rollout import RolloutOptions, RolloutResult, fleet_status, rollback_group, rollout

__all__ = ["RolloutOptions", "RolloutResult", "rollout", "fleet_status", "rollback_group"]
