"""The exported playbook and role, as text (kit.ansible.export writes them into the export folder).

The role does what `edgekit rollout` does for one host (kit/fleet/device_update.py), with the
agent's own verbs as the single source of truth, every one run as an argv list
(ansible.builtin.command `argv:`: no shell, no command line built from data):

  resolve the agent home -> copy agent.tar, trusted keys, bundle.tar (one deterministic tar each,
  kit/ansible/archive.py; the copy module sends a file only when its checksum differs and checks
  the transfer's sha1) -> unpack the agent with the agent's own checked extraction
  (device_agents.tarball, against the exported sha256 pins) -> status (what runs now) -> if not
  current: unpack the bundle (`verify --bundle <tar>`: signature, then the checked extraction into
  bundles/<id>) -> activate (verifies, then switches atomically) -> health gate (the agent's
  bench of the activated version, then reference check and latency budget) -> on any failure roll
  back (`rollback --expect-current <new>`: a no-op unless the new version is current) and fail the
  host. Every host's agent JSON is written to <export>/results/<host>.json on the controller;
  `edgekit ansible collect` stores it. A host that already runs the bundle is left alone (a second
  run sends nothing and switches nothing).
"""

PLAYBOOK = """\
# Made by `edgekit ansible export`: roll bundle {bundle_id} ({model}) out to group {group}.
# Canary then batches (serial), stop per max_fail_percentage (counted per batch, as Ansible does).
# Run: ansible-playbook rollout.yml   (ansible.cfg here names the inventory; or -i your own)
- name: EdgeKit rollout of {bundle_id} to {group}
  hosts: "{group}"
  gather_facts: false
  serial: {serial}
  max_fail_percentage: {max_fail_percentage}
  roles:
    - edgekit_rollout
"""

ANSIBLE_CFG = """\
[defaults]
inventory = inventory.yml
forks = {forks}
host_key_checking = True
retry_files_enabled = False
interpreter_python = auto_silent
roles_path = roles

[ssh_connection]
pipelining = True
ssh_args = -o ControlMaster=auto -o ControlPersist=120s -o ServerAliveInterval=5 -o ServerAliveCountMax=4
"""

_AGENT_ENV = """\
  environment:
    EDGEKIT_HOME: "{{ ek_home }}"
    PYTHONPATH: "{{ ek_agent_dir }}"
"""


def _agent_task(name: str, verb_args: str, register: str, *, changed: str = "false", failed: bool = True,
                indent: int = 0, extra: str = "") -> str:
    """One agent verb as an argv command task (its JSON on stdout is registered)."""
    doc = (f"- name: \"edgekit | {name}\"\n"
           f"  ansible.builtin.command:\n"
           f"    argv: [\"{{{{ edgekit_python }}}}\", \"-m\", \"device_agents\", {verb_args}]\n"
           + _AGENT_ENV +
           f"  register: {register}\n"
           f"  changed_when: {changed}\n")
    if failed:
        doc += f"  failed_when: not ((({register}.stdout | default('')) or 'null') | from_json | default({{}}, true)).ok | default(false)\n"
    doc += extra
    pad = " " * indent
    return "".join(pad + line if line.strip() else line for line in doc.splitlines(keepends=True))


def _doc(register: str) -> str:
    """The agent's envelope a task registered (null when it did not run)."""
    return f"((({register}.stdout | default('')) or 'null') | from_json)"


_RECORD = """\
ek_record:
  host: "{{ inventory_hostname }}"
  bundle_id: "{{ edgekit_bundle_id }}"
  model_name: "{{ edgekit_model }}"
  play_batch: "{{ ansible_play_batch }}"
  previous_bundle_id: "{{ ek_current }}"
  copied: {agent: "{{ ek_copy_agent.changed | default(false) }}", bundle: "{{ ek_copy_bundle.changed | default(false) }}"}
  agent:
    status: "{{ %(status)s }}"
    activate: "{{ %(activate)s }}"
    gate: "{{ %(gate)s }}"
    rollback: "{{ %(rollback)s }}"
""" % {"status": _doc("ek_status_out"), "activate": _doc("ek_activate_out"), "gate": _doc("ek_gate_out"),
       "rollback": _doc("ek_rollback_out")}


def _write_record(outcome: str, error: str, indent: int) -> str:
    rec = _RECORD.replace("ek_record:\n", "")
    doc = ("- name: \"edgekit | record this host's agent JSON in the export folder\"\n"
           "  ansible.builtin.copy:\n"
           "    dest: \"{{ edgekit_results_dir }}/{{ inventory_hostname }}.json\"\n"
           "    content: \"{{ ek_out | to_nice_json }}\"\n"
           "    mode: \"0644\"\n"
           "  vars:\n"
           "    ek_out: \"{{ ek_rec | combine({'outcome': ek_outcome, 'error': ek_error}) }}\"\n"
           f"    ek_outcome: \"{outcome}\"\n"
           f"    ek_error: \"{error}\"\n"
           "    ek_rec:\n" + "".join("    " + ln for ln in rec.splitlines(keepends=True)) +
           "  delegate_to: localhost\n"
           "  changed_when: false  # bookkeeping on the controller, not a change to the host\n")
    pad = " " * indent
    return "".join(pad + line for line in doc.splitlines(keepends=True))


_GATE_OPTS = ("{{ {'runs': edgekit_health_runs | int, 'warmup': edgekit_health_warmup | int, "
              "'threads': edgekit_threads | int, 'deadline_s': edgekit_agent_timeout_s | float} | to_json }}")
_GATE_OK = ("({gate}.result.reference_check.passed | default(false)) and (edgekit_latency_budget_ms is none or "
            "({gate}.result.latency[edgekit_latency_stat] | float) <= (edgekit_latency_budget_ms | float))"
            ).format(gate=_doc("ek_gate_out"))

TASKS = ("""\
# Made by `edgekit ansible export` (kit/ansible/role.py describes it). Every agent call is argv.
- name: "edgekit | resolve the agent home on the device (and make its agent/ and bundles/.ansible/)"
  ansible.builtin.command:
    argv: ["{{ edgekit_python }}", "-c", "import os, sys; h = os.path.abspath(os.path.expanduser(sys.argv[1])); [os.makedirs(os.path.join(h, d), exist_ok=True) for d in ('agent', 'bundles/.ansible')]; print(h)", "{{ edgekit_home }}"]
  register: ek_home_out
  changed_when: false

- name: "edgekit | where things go"
  ansible.builtin.set_fact:
    ek_home: "{{ ek_home_out.stdout | trim }}"
    ek_agent_dir: "{{ ek_home_out.stdout | trim }}/agent/{{ edgekit_agent_version }}"
    ek_bundle_dir: "{{ ek_home_out.stdout | trim }}/bundles/{{ edgekit_bundle_id }}"
    ek_agent_tar: "{{ ek_home_out.stdout | trim }}/agent/.{{ edgekit_agent_version }}.tar"
    ek_bundle_tar: "{{ ek_home_out.stdout | trim }}/bundles/.ansible/{{ edgekit_bundle_id }}.tar"

- name: "edgekit | copy the agent as one tar (checksum: sent only when different)"
  ansible.builtin.copy:
    src: agent.tar
    dest: "{{ ek_agent_tar }}"
    checksum: "{{ edgekit_agent_tar_sha1 }}"
  register: ek_copy_agent

- name: "edgekit | unpack the agent with its own checked extraction (sha256 pins; no links, no '..')"
  ansible.builtin.command:
    argv: ["{{ edgekit_python }}", "-c", "{{ edgekit_unpack_agent }}", "{{ ek_agent_tar }}", "{{ ek_agent_dir }}", "{{ edgekit_agent_tar_sha256 }}", "{{ edgekit_agent_files | to_json }}"]
  register: ek_unpack_agent
  changed_when: (ek_unpack_agent.stdout | from_json).changed | default(false)
  failed_when: not (((ek_unpack_agent.stdout | default('')) or 'null') | from_json | default({}, true)).ok | default(false)

- name: "edgekit | copy the trusted signing keys"
  ansible.builtin.copy:
    src: trusted_keys/
    dest: "{{ ek_home }}/trusted_keys/"

- name: "edgekit | copy the bundle as one tar (checksum; the agent verifies the signature and every file)"
  ansible.builtin.copy:
    src: bundle.tar
    dest: "{{ ek_bundle_tar }}"
    checksum: "{{ edgekit_bundle_tar_sha1 }}"
  register: ek_copy_bundle

""" + _agent_task("status: what runs now", '"status", "--name", "{{ edgekit_model }}"', "ek_status_out") + """
- name: "edgekit | the running version"
  ansible.builtin.set_fact:
    ek_current: "{{ ((%(status)s.result.models.get(edgekit_model) or {}).get('current') or {}).get('bundle_id') or '' }}"

- name: "edgekit | update (activate, health gate; roll back on failure)"
  when: ek_current != edgekit_bundle_id
  block:
""" % {"status": _doc("ek_status_out")}
    + _agent_task("unpack the bundle (signature first, then the checked extraction into bundles/<id>)",
                  '"verify", "--bundle", "{{ ek_bundle_tar }}"', "ek_verify_out", indent=4)
    + _agent_task("activate (verifies every file and the signature, then switches atomically)", '"activate", "--bundle", "{{ ek_bundle_dir }}", "--name", "{{ edgekit_model }}"',
                  "ek_activate_out", changed=f"{_doc('ek_activate_out')}.result.changed | default(false)", indent=4)
    + _agent_task("health gate: the agent benches the activated version",
                  '"bench", "--bundle", "{{ %s.result.installed_path }}", "--opts", "%s"' % (_doc("ek_activate_out"), _GATE_OPTS),
                  "ek_gate_out", indent=4, extra="  timeout: \"{{ (edgekit_agent_timeout_s | int) + 60 }}\"\n")
    + """\
    - name: "edgekit | health gate verdict (reference check, latency budget)"
      ansible.builtin.assert:
        that: ["%(ok)s"]
        fail_msg: "health gate failed on {{ inventory_hostname }}: reference {{ %(gate)s.result.reference_check | default('n/a') }}, {{ edgekit_latency_stat }} {{ %(gate)s.result.latency[edgekit_latency_stat] | default('n/a') }} ms, budget {{ edgekit_latency_budget_ms }}"
        quiet: true
""" % {"ok": _GATE_OK.replace('"', '\\"'), "gate": _doc("ek_gate_out")}
    + _write_record("updated", "", 4)
    + """\
  rescue:
""" + _agent_task("roll back (only if the new version is current)",
                  '"rollback", "--name", "{{ edgekit_model }}", "--expect-current", "{{ edgekit_bundle_id }}"',
                  "ek_rollback_out", changed=f"{_doc('ek_rollback_out')}.result.changed | default(false)", failed=False,
                  indent=4)
    + _write_record("failed", "{{ ansible_failed_result.msg | default(ansible_failed_result.stderr | default('failed')) | string | truncate(300) }}", 4)
    + """\
    - name: "edgekit | this host failed (rolled back): the play's max_fail_percentage decides"
      ansible.builtin.fail:
        msg: "{{ inventory_hostname }}: update to {{ edgekit_bundle_id }} failed and was rolled back"

""" + _write_record("unchanged", "", 0).replace("- name:", "- when: ek_current == edgekit_bundle_id\n  name:", 1))
