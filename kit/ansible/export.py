"""`export_playbook(bundle, entries, group, out)`: a self-contained Ansible project that rolls one
bundle out the way `edgekit rollout` does (kit/ansible/role.py has the tasks).

    out/ansible.cfg              forks, strict host keys, pipelining, the inventory below
    out/inventory.yml            the group's hosts with their connection vars (or use your own: -i)
    out/rollout.yml              the play: serial [canary, batch...], max_fail_percentage
    out/roles/edgekit_rollout/   defaults (bundle id, model, gate settings, archive digests), tasks,
                                 and files: agent.tar, bundle.tar (one deterministic plain tar
                                 each, kit/ansible/archive.py), the trusted signing keys
    out/results/                 filled by the play: one agent-JSON record per host
    out/edgekit-export.json      what was exported (read by `edgekit ansible collect`)

Host keys stay strict: each host's ssh uses StrictHostKeyChecking=yes with the known_hosts files
the kit itself reads for that device (the entry's own, else ~/.ssh/known_hosts and the kit's).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import yaml

import device_agents
from kit.ansible import archive, role
from kit.devices.entry import DeviceEntry
from kit.errors import EdgeKitError
from kit.fleet.health import latency_budget
from kit.fleet.options import RolloutOptions

EXPORT_FILE = "edgekit-export.json"
ROLE = "edgekit_rollout"


def _known_hosts(entry: DeviceEntry) -> list[str]:
    if entry.known_hosts:
        return [str(Path(entry.known_hosts).expanduser())]
    from kit.config import config_dir

    return [str(Path.home() / ".ssh" / "known_hosts"), str(config_dir() / "known_hosts")]


def host_vars(entry: DeviceEntry) -> dict:
    """Ansible connection variables for one kit inventory entry."""
    if entry.forced_command:
        raise EdgeKitError(f"device {entry.name}: its key is pinned to the forced-command agent, which allows no "
                           f"Ansible modules; roll it out with 'edgekit rollout' or give Ansible an enrolment key")
    kh = " ".join(_known_hosts(entry))
    v = {"ansible_host": entry.host, "ansible_port": entry.port,
         "ansible_ssh_common_args": f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={shlex.quote(kh)}",
         "ansible_python_interpreter": entry.python, "edgekit_python": entry.python, "edgekit_home": entry.home}
    if entry.user:
        v["ansible_user"] = entry.user
    if entry.key:
        v["ansible_ssh_private_key_file"] = str(Path(entry.key).expanduser())
    for k, val in (entry.vars or {}).items():  # per-host overrides (e.g. edgekit_latency_budget_ms)
        if k.startswith("edgekit_") and k not in v:
            v[k] = val
    return v


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()  # the copy module's own transfer check (checksum:)


def _serial(n: int, opts: RolloutOptions) -> list[int]:
    """Ansible's serial list: the canaries, then batches (the last size repeats to the end)."""
    return [min(opts.canary, n)] + ([opts.batch_size] if n > opts.canary else [])


def export_playbook(bundle, entries: list[DeviceEntry], group: str, out: str | Path, *,
                    options: RolloutOptions | None = None, max_fail_percentage: int = 0,
                    model_name: str | None = None, force: bool = False) -> Path:
    """Write the Ansible project for rolling `bundle` out to `entries` (group `group`) into `out`."""
    from kit.devices.enrol import default_trusted_keys
    from kit.package.bundle import Bundle

    opts = options or RolloutOptions()
    bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    if bundle.is_tar:
        raise EdgeKitError(f"{bundle.path}: export a bundle folder, not a .tar (unpack it first)")
    if not entries:
        raise EdgeKitError(f"group {group}: no devices to export")
    if not 0 <= max_fail_percentage <= 100:
        raise EdgeKitError(f"--max-fail-percentage {max_fail_percentage}: use 0..100")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise EdgeKitError(f"{out}: not empty; choose a new folder or pass --force to replace it")
        shutil.rmtree(out)
    model = model_name or bundle.manifest.get("name") or "model"
    files = out / "roles" / ROLE / "files"
    agent_sha, agent_pins = archive.agent_tar(Path(device_agents.__file__).parent, files / "agent.tar")
    bundle_sha = archive.bundle_tar(bundle, files / "bundle.tar")
    (files / "trusted_keys").mkdir(parents=True)
    for key in default_trusted_keys():
        data = Path(key).read_bytes()  # the same names the kit's own transport gives them
        (files / "trusted_keys" / f"{hashlib.sha256(data).hexdigest()[:16]}.pub").write_bytes(data)
    (out / "results").mkdir()

    defaults = {
        "edgekit_bundle_id": bundle.bundle_id, "edgekit_model": model, "edgekit_agent_version": device_agents.AGENT_VERSION,
        "edgekit_home": "~/.edgekit", "edgekit_python": "python3",
        "edgekit_health_runs": opts.health_runs, "edgekit_health_warmup": opts.health_warmup, "edgekit_threads": opts.threads,
        "edgekit_latency_budget_ms": latency_budget(bundle, opts), "edgekit_latency_stat": opts.latency_stat,
        "edgekit_agent_timeout_s": opts.agent_timeout_s,
        "edgekit_results_dir": str((out / "results").resolve()),
        # The archives (sha256 checked on the device, sha1 by the copy module after the transfer).
        "edgekit_agent_tar_sha256": agent_sha, "edgekit_agent_tar_sha1": _sha1(files / "agent.tar"),
        "edgekit_bundle_tar_sha256": bundle_sha, "edgekit_bundle_tar_sha1": _sha1(files / "bundle.tar"),
        "edgekit_agent_files": agent_pins,
        "edgekit_unpack_agent": archive.UNPACK_AGENT,
    }
    _write(out / "roles" / ROLE / "defaults" / "main.yml", "# edgekit ansible export: override per host or with -e\n"
           + yaml.safe_dump(defaults, sort_keys=False))
    _write(out / "roles" / ROLE / "tasks" / "main.yml", role.TASKS)
    inventory = {"all": {"children": {group: {"hosts": {e.name: host_vars(e) for e in entries}}}}}
    _write(out / "inventory.yml", yaml.safe_dump(inventory, sort_keys=False))
    _write(out / "rollout.yml", role.PLAYBOOK.format(bundle_id=bundle.bundle_id, model=model, group=group,
                                                     serial=json.dumps(_serial(len(entries), opts)),
                                                     max_fail_percentage=int(max_fail_percentage)))
    _write(out / "ansible.cfg", role.ANSIBLE_CFG.format(forks=opts.max_parallel))
    _write(out / EXPORT_FILE, json.dumps({
        "bundle_id": bundle.bundle_id, "model_name": model, "group": group, "hosts": [e.name for e in entries],
        "options": asdict(opts), "max_fail_percentage": max_fail_percentage, "created": time.time(),
        "agent_version": device_agents.AGENT_VERSION}, indent=2))
    return out


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
