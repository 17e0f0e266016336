"""Ansible as the rollout engine past one host: `export_playbook` writes a playbook + role doing
what `edgekit rollout` does (with Ansible's inventory, forks, serial and max_fail_percentage),
`run_playbook` drives ansible-playbook as a subprocess (ansible-core is never imported: it is an
optional extra, `pip install 'edgekit[ansible]'`), `collect` stores each host's agent JSON in the
results store like a native rollout. Builds on kit.devices, kit.fleet, kit.package, kit.results."""
