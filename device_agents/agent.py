"""Device agent entry point: `python3 -m device_agents <verb> [options]`, one JSON document out.

Verbs: info | verify | bench | activate | rollback | status (fleet verbs: install.py). The agent accepts bundles (folders on the device) and option
values, never shell strings. A model file is hostile input until its hash is verified, and even
then it is parsed and run only in a child process under resource limits and a deadline.
"""

from __future__ import annotations

import argparse
import json
import platform

from device_agents import install, liveness, runtimes, sensors
from device_agents import bench as bench_mod
from device_agents.bundle import verify_bundle
from device_agents.errors import AgentError, as_agent_error
from device_agents.protocol import reply


def info() -> dict:
    """Architecture, CPU clusters and core types, clocks, RAM, OS, runtimes, readable sensors."""
    return sensors.info(sensors.SensorConfig.from_env(), runtimes.available())


def bench(bundle: str, opts: dict, trust_dirs=()) -> dict:
    # Signature, replay, expiry, every file's hash; a .tar is extracted to <home>/bundles/<id>.
    bundle, manifest = verify_bundle(bundle, trust_dirs=trust_dirs)  # before anything parses the model
    options = bench_mod.BenchOptions.parse(opts)
    monitor = sensors.RunMonitor(sensors.SensorConfig.from_env(), power_requested=options.power,
                                 idle_s=options.idle_s, cooldown_c=options.cooldown_c,
                                 cooldown_max_s=options.cooldown_max_s, interval_s=options.power_interval_s)
    monitor.start()
    result = None
    try:
        result = bench_mod.run_in_child(bundle, manifest, options)
    finally:  # stop the samplers even when the child failed
        power, thermal = monitor.finish(tuple(result["window"]) if result else None,
                                        result["latency"]["runs"] if result else None,
                                        result["affinity"] if result else options.cpus)
    result.update({
        "bundle_id": manifest.get("bundle_id"),
        "model_name": manifest.get("name"),
        "model_sha256": manifest["model"]["sha256"],
        "verified": {"hashes": True, "signature": manifest.get("_signature_checked", False)},
        "power": power,
        "thermal": thermal,
        "device": {"arch": platform.machine(), "hostname": platform.node()},
    })
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="device_agents", description=__doc__)
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("info")
    v = sub.add_parser("verify")
    v.add_argument("--bundle", required=True)
    v.add_argument("--trust-dir", action="append", default=[], help="extra folder (or .pub file) of trusted keys")
    install.add_parsers(sub)  # fleet verbs: activate | rollback | status
    b = sub.add_parser("bench")
    b.add_argument("--bundle", required=True)
    b.add_argument("--trust-dir", action="append", default=[], help="extra folder (or .pub file) of trusted keys")
    b.add_argument("--opts", default="{}", help="JSON options (device_agents.bench.BenchOptions)")
    b.add_argument("--runs", type=int)
    b.add_argument("--warmup", type=int)
    b.add_argument("--threads", type=int)
    b.add_argument("--cpus", type=lambda s: [int(v) for v in s.split(",")], help="pin to these CPUs, e.g. 4,5,6,7")
    b.add_argument("--min-time-s", type=float)
    b.add_argument("--deadline-s", type=float)
    b.add_argument("--max-memory-mb", type=int)
    b.add_argument("--input-shape", type=lambda s: [int(v) for v in s.split(",")])
    b.add_argument("--power", action="store_true")
    return p


def main(argv=None) -> int:
    parser = _parser()
    # argparse exits with usage text on bad input; the host needs JSON, so catch it.
    parser.error = lambda msg: (_ for _ in ()).throw(AgentError("bad_arguments", msg))  # type: ignore[method-assign]
    for sp in parser._subparsers._group_actions[0].choices.values():  # type: ignore[union-attr]
        sp.error = parser.error
    verb = "?"
    try:
        args = parser.parse_args(argv)
        verb = args.verb
        with liveness.start(verb):  # a heartbeat on stderr while the verb runs; exits if the session is gone
            return reply(verb, _run(args))
    except Exception as e:  # the host must always get JSON back
        return reply(verb, error=as_agent_error(e, "out of memory under the agent's limit"))


def _run(args) -> dict:
    if args.verb == "info":
        return info()
    if args.verb == "verify":
        path, m = verify_bundle(args.bundle, trust_dirs=args.trust_dir)
        return {"bundle_id": m.get("bundle_id"), "verified": True, "path": path, "name": m.get("name"),
                "sequence": m.get("sequence"), "key_id": m.get("_signature_checked")}
    if args.verb in install.VERBS:
        return install.run_verb(args)
    opts = json.loads(args.opts)
    for key in ("runs", "warmup", "threads", "cpus", "min_time_s", "deadline_s", "max_memory_mb", "input_shape"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    if args.power:
        opts["power"] = True
    return bench(args.bundle, opts, args.trust_dir)
