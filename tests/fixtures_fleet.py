"""Fleet test fixtures: signed bundles (good, bad, big), network namespaces with veth links,
sshd devices inside them, a delaying TCP proxy, and a fast-failing SSH connect for rollouts.

Everything a test creates here (namespaces, veths, nftables rules, qdiscs, servers, proxies) is
removed in a `finally`, pass or fail. Namespace names carry this process's pid so parallel runs
never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

# tests.fixtures_sshd is imported inside functions: importing it here, before pytest loads it as
# a plugin, would stop pytest from rewriting its asserts.

_counter = itertools.count(1)


# --- signing + bundles --------------------------------------------------------------------------

@pytest.fixture(scope="session")
def fleet_keys(tmp_path_factory):
    """A signing key for fleet bundles (devices trust it through the transport's key install)."""
    if not os.environ.get("EDGEKIT_CONFIG_DIR"):
        os.environ["EDGEKIT_CONFIG_DIR"] = str(tmp_path_factory.mktemp("edgekit-config"))
    from kit.package.signing import ensure_keys

    return ensure_keys()


class _Wide(torch.nn.Module):
    """A real model whose weights make the bundle `hidden * 1 KiB` big (push-time faults, benchmarks)."""

    def __init__(self, hidden: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1 = torch.nn.Linear(256, hidden)
        self.fc2 = torch.nn.Linear(hidden, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def make_bundle(out: Path, name: str, hidden: int = 32, seed: int = 0, break_reference: bool = False):
    """A signed ONNX bundle of a small real model; `break_reference` makes its reference check fail."""
    from kit.package import package
    from kit.package.bundle import Bundle, write_bundle

    x = np.random.default_rng(seed).standard_normal((1, 1, 16, 16)).astype(np.float32)
    b = package(_Wide(hidden, seed).eval(), "onnx", out, x, name=name)
    if not break_reference:
        return b
    ref_out = np.load(b.path / "reference_output.npy") + 100.0  # far outside atol: the gate must fail
    model = out.parent / f"{out.name}-model.onnx"
    shutil.copyfile(b.model_file, model)
    shutil.rmtree(out)
    return Bundle.load(write_bundle(out, model, name, x, ref_out).path)


@pytest.fixture(scope="session")
def fleet_bundles(fleet_keys, tmp_path_factory):
    """v1 -> v2 of model 'tiny' (good), v3 of 'tiny' whose reference check fails, and 'big' (~1.5 MB)."""
    root = tmp_path_factory.mktemp("fleet-bundles")
    out = {}
    for key, kw in (("v1", dict(seed=1)), ("v2", dict(seed=2)), ("bad", dict(seed=3, break_reference=True)),
                    ("big", dict(seed=4, hidden=1500))):
        out[key] = make_bundle(root / key, "big" if key == "big" else "tiny", **kw)
    # A second version of 'big' with the same model bytes (a new signed manifest: a new bundle_id).
    from kit.package.bundle import write_bundle

    big = out["big"]
    out["big2"] = write_bundle(root / "big2", big.model_file, "big", np.load(big.path / "reference_input.npy"),
                               np.load(big.path / "reference_output.npy"))
    return out


# --- SSH connect with short deadlines -------------------------------------------------------------

def fast_connect(entry, **deadlines):
    """SshDevice with deadlines short enough for fault tests (a dead link is noticed in ~3 s)."""
    from kit.devices.ssh.transport import Deadlines, SshDevice

    d = {"connect_s": 10, "command_s": 90, "io_idle_s": 5, "transfer_s": 60, **deadlines}
    return SshDevice(entry, deadlines=Deadlines(**d), allow_agent=False)


def fast_options(**kw):
    from kit.fleet.rollout import RolloutOptions

    base = dict(health_runs=3, health_warmup=1, retries=4, backoff_s=0.3, backoff_max_s=2.0, agent_timeout_s=60)
    return RolloutOptions(**{**base, **kw})


def device_status(entry, model: str) -> dict:
    """What the device runs now, read over a fresh connection (the ground truth a test compares to)."""
    with fast_connect(entry) as dev:
        doc = dev.run_agent(["status", "--name", model], timeout=60)
    assert doc["ok"], doc
    return doc["result"]["models"].get(model) or {}


def current_id(entry, model: str) -> str | None:
    return (device_status(entry, model).get("current") or {}).get("bundle_id")


def assert_consistent(result, entries, model: str, old: dict[str, str | None]) -> None:
    """Every device runs the new or its previous version (complete), and the record says which."""
    by_name = {d.device: d for d in result.devices}
    for e in entries:
        st = device_status(e, model)
        cur = (st.get("current") or {})
        if cur:
            assert cur["present"], f"{e.name}: current points at a missing/partial version: {st}"
            with fast_connect(e) as dev:  # every file of the running version matches its manifest
                doc = dev.run_agent(["verify", "--bundle", cur["path"]], timeout=60)
            assert doc["ok"], f"{e.name}: the running version does not verify: {doc}"
        now = cur.get("bundle_id")
        assert now in (result.bundle_id, old[e.name]), f"{e.name} runs {now}, neither new nor its previous"
        label = result.runs(by_name[e.name])
        assert label in ("new", "previous"), f"{e.name}: record does not know what it runs: {by_name[e.name]}"
        assert (now == result.bundle_id) == (label == "new"), f"{e.name}: record says {label}, device runs {now}"
        if label == "previous" and by_name[e.name].running_bundle_id is not None:
            assert (by_name[e.name].running_bundle_id or None) == now


@pytest.fixture
def fleet_sshd(tmp_path, fleet_keys):
    """SshdFactory for fleet tests (after the signing key exists, so devices trust it)."""
    from tests.fixtures_sshd import SshdFactory

    with SshdFactory(tmp_path / "sshd") as f:
        yield f


# --- network namespaces ---------------------------------------------------------------------------

def _ip(*args, check=True, netns: str | None = None) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def netns_refusal() -> str | None:
    """Why this machine refuses network namespaces (None if it allows them)."""
    if shutil.which("ip") is None:
        return "iproute2 is not installed (apt-get install -y iproute2)"
    name = f"ekprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return f"'ip netns add' refused: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


def sweep_stale_namespaces() -> None:
    """Remove namespaces an earlier, SIGKILLed test run of ours left behind (its pid is gone)."""
    import re
    import signal

    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        m = re.match(r"^(ekns(\d+)x\d+)\b", line.strip())
        if not m or Path(f"/proc/{m.group(2)}").exists():
            continue
        pids = subprocess.run(["ip", "netns", "pids", m.group(1)], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", m.group(1)], capture_output=True)


@pytest.fixture
def netns_ok():
    why = netns_refusal()
    if not why:
        sweep_stale_namespaces()
    if why:
        print(f"SKIP network-namespace fault test: {why}")
        pytest.skip(why)


class NetnsLink:
    """A namespace joined to the host by a veth pair: host 10.213.<n>.1/24, namespace 10.213.<n>.2/24."""

    def __init__(self):
        n = (os.getpid() % 200) + next(_counter) * 7 % 50
        self.n = n % 250 + 1
        tag = f"{os.getpid()}x{next(_counter)}"  # pid first: a stale namespace names its (dead) creator
        self.ns = f"ekns{tag}"
        self.host_if, self.ns_if = f"ekh{tag}"[:15], f"ekd{tag}"[:15]
        self.host_addr, self.ns_addr = f"10.213.{self.n}.1", f"10.213.{self.n}.2"

    def __enter__(self):
        try:
            _ip("ip", "netns", "add", self.ns)
            _ip("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("ip", "link", "set", self.ns_if, "netns", self.ns)
            _ip("ip", "addr", "add", f"{self.host_addr}/24", "dev", self.host_if)
            _ip("ip", "link", "set", self.host_if, "up")
            _ip("ip", "addr", "add", f"{self.ns_addr}/24", "dev", self.ns_if, netns=self.ns)
            _ip("ip", "link", "set", self.ns_if, "up", netns=self.ns)
            _ip("ip", "link", "set", "lo", "up", netns=self.ns)
        except BaseException:
            self.close()
            raise
        return self

    def down(self):
        _ip("ip", "link", "set", self.host_if, "down")

    def up(self):
        _ip("ip", "link", "set", self.host_if, "up")

    def slow(self, rate: str = "8mbit"):
        _ip("tc", "qdisc", "add", "dev", self.host_if, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms")
        # the device's answers too, so both directions are slow
        _ip("tc", "qdisc", "add", "dev", self.ns_if, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms",
            netns=self.ns)

    def loss(self, percent: int):
        """Drop `percent`% of the namespace's outgoing packets (nftables inside the namespace only)."""
        rules = (f"add table inet ekloss\n"
                 f"add chain inet ekloss out {{ type filter hook output priority 0; policy accept; }}\n"
                 f"add rule inet ekloss out oifname \"{self.ns_if}\" numgen random mod 100 < {percent} drop\n")
        subprocess.run(["ip", "netns", "exec", self.ns, "nft", "-f", "-"], input=rules, text=True, check=True,
                       capture_output=True)

    def close(self):
        # Deleting the namespace deletes its end of the veth (and so the pair), its nftables
        # tables and qdiscs; the host end is removed explicitly in case the move never happened.
        subprocess.run(["ip", "netns", "exec", self.ns, "nft", "flush", "ruleset"], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def __exit__(self, *exc):
        self.close()


def netns_sshd(root: Path, name: str, link: "NetnsLink", **kw):
    """An sshd listening on the namespace's address, started with `ip netns exec`."""
    from tests.fixtures_sshd import SshdServer

    class NetnsSshd(SshdServer):

        def __init__(self, root: Path, name: str, link: NetnsLink, **kw):
            super().__init__(root, name, **kw)
            self.link = link
            self.addr = link.ns_addr
            self.config.write_text(self.config.read_text().replace("ListenAddress 127.0.0.1", f"ListenAddress {self.addr}"))
            self.set_known_host(self.addr, self.port)

        def set_known_host(self, host: str, port: int) -> None:
            self.known_hosts.write_text(f"[{host}]:{port} {self._pub(self.host_key)}\n")

        def start(self, timeout: float = 10.0):
            import socket

            Path("/run/sshd").mkdir(parents=True, exist_ok=True)
            subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(self.config)], check=True, capture_output=True)
            self.log = open(self.dir / "sshd.log", "ab")
            # `ip netns exec` execs sshd, so this PID is the listener itself.
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.link.ns, "/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)],
                                         stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sshd {self.name} exited: {(self.dir / 'sshd.log').read_text()[-400:]}")
                with socket.socket() as s:
                    s.settimeout(0.5)
                    if s.connect_ex((self.addr, self.port)) == 0:
                        return self
                time.sleep(0.05)
            self.stop()
            raise RuntimeError(f"sshd {self.name} did not listen on {self.addr}:{self.port}")

        def entry(self, **overrides):
            return super().entry(**{"host": self.addr, **overrides})

    return NetnsSshd(root, name, link, **kw)


@pytest.fixture
def netns_device(tmp_path, fleet_keys, netns_ok):
    """Factory: netns_device(name) -> (NetnsLink, NetnsSshd). All removed at teardown."""
    made: list = []

    def make(name: str):
        link = NetnsLink().__enter__()
        made.append(link)
        server = netns_sshd(tmp_path / name, name, link)
        made.append(server)
        server.start()
        return link, server

    try:
        yield make
    finally:
        for thing in reversed(made):
            with contextlib.suppress(Exception):
                thing.close() if isinstance(thing, NetnsLink) else thing.stop()


# --- a delaying TCP proxy ---------------------------------------------------------------------------

class DelayProxy:
    """127.0.0.1:<port> -> target, every chunk held back `delay_s` in each direction (order kept).

    Written by hand because netem is missing from this kernel and no small library does this;
    it runs on its own asyncio loop in a thread and closes everything on stop().
    """

    def __init__(self, target: tuple[str, int], delay_s: float):
        self.target, self.delay_s = target, delay_s
        from tests.fixtures_sshd import free_port

        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = None
        self.tasks: set = set()

    async def _pipe(self, reader, writer):
        q: asyncio.Queue = asyncio.Queue()

        async def pump_in():
            while True:
                data = await reader.read(65536)
                await q.put((self.loop.time() + self.delay_s, data))
                if not data:
                    return

        async def pump_out():
            while True:
                due, data = await q.get()
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                if not data:
                    with contextlib.suppress(Exception):
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        await asyncio.gather(pump_in(), pump_out(), return_exceptions=True)

    async def _handle(self, reader, writer):
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer), return_exceptions=True)
        for w in (writer, up_w):
            with contextlib.suppress(Exception):
                w.close()

    def start(self):
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, "127.0.0.1", self.port), self.loop)
        self.server = fut.result(timeout=10)
        return self

    def stop(self):
        async def shutdown():
            self.server.close()
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def python_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return env


def edgekit_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kit", *args]
