"""The lab's bookkeeping without root, qemu or a rootfs build: the rootfs cache, Pi state files,
the shared binfmt handler's holders, the cgroup quota check, the delay proxy, and a missing sshd."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest

from kit.errors import EdgeKitError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "pi-rootfs"


def test_recipe_key_names_what_the_rootfs_is_made_from():
    from kit.testbed.pi import PiRecipe

    assert PiRecipe().key() == PiRecipe().key() and len(PiRecipe().key()) == 16
    assert PiRecipe(wheels=("onnxruntime==1.31.0",)).key() != PiRecipe().key()


def test_a_complete_cache_entry_is_reused_and_listed(cache):
    from kit.testbed.pi import PiRecipe, build_rootfs, status

    key = PiRecipe().key()
    (cache / key / "rootfs").mkdir(parents=True)
    (cache / key / "build.json").write_text(json.dumps({"build_s": 612.5, "python": "3.11.2",
                                                        "runtimes": {"onnxruntime": "1.32.0"}, "built_at": "x"}))
    (cache / "0123456789abcdef.partial").mkdir()  # an interrupted build is not a cache entry
    info = build_rootfs()
    assert (info.built, info.key, info.path, info.recorded_build_s) == (False, key, cache / key / "rootfs", 612.5)
    st = status()
    assert st["cache"] == str(cache) and st["running"] == []
    assert [(r["key"], r["current"], r["runtimes"]) for r in st["rootfs"]] == [(key, True, {"onnxruntime": "1.32.0"})]


def test_cli_status_json_is_one_document(cache, capsys):
    from kit.cli import main

    assert main(["emulate-pi", "status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["cache"] == str(cache) and st["rootfs"] == [] and st["running"] == []
    assert isinstance(st["binfmt_registered"], bool)


def test_a_recorded_pi_whose_namespace_is_gone_is_not_running(cache):
    from kit.testbed.pi import EmulatedPi, load_pi, running, runs_dir
    from kit.testbed.pi.state import write_state

    (runs_dir() / "pi-x").mkdir(parents=True)
    pi = EmulatedPi(name="pi-x", port=2222, pid=os.getpid(), run_dir=str(runs_dir() / "pi-x"), rootfs="/r",
                    rootfs_key="k", client_key="/c", known_hosts="/kh", start_s=1.0)
    write_state(pi)
    assert load_pi("pi-x") == pi
    assert load_pi("pi-y") is None
    assert running() == []  # our own pid is not an `unshare`: a recycled PID is not the device


def test_the_binfmt_handler_stays_while_a_holder_lives(tmp_path, monkeypatch):
    from kit.testbed.pi import binfmt

    state, handlers = tmp_path / "run", tmp_path / "binfmt_misc"
    handlers.mkdir()
    (handlers / "register").touch()  # mounted already: nothing to mount
    (handlers / binfmt.BINFMT_NAME).write_text("enabled\nflags: PF\n")
    monkeypatch.setattr(binfmt, "BINFMT_STATE", state)
    monkeypatch.setattr(binfmt, "MARKER", state / "binfmt-made.json")
    monkeypatch.setattr(binfmt, "BINFMT_DIR", handlers)
    assert binfmt.binfmt_setup(os.getpid()) == {}  # registered already, with F: the kit changed nothing
    state.joinpath("binfmt-made.json").write_text(json.dumps({"registered": True}))  # as if the kit had
    binfmt.binfmt_hold(4_000_000)  # a holder that died without releasing (no such pid)
    assert binfmt.read_marker() == {"registered": True}
    assert binfmt.binfmt_release(12345678) is False  # we still hold it
    assert not (state / "holders" / "4000000").exists()  # the dead holder was swept
    assert binfmt.binfmt_release(os.getpid()) is True  # last one out undoes it
    assert (handlers / binfmt.BINFMT_NAME).read_text() == "-1" and binfmt.read_marker() == {}


def test_a_cpu_quota_out_of_range_is_refused_before_any_cgroup_is_made():
    from kit.testbed.pi.cgroup import make_cgroup

    with pytest.raises(EdgeKitError, match="cpu quota 100"):
        make_cgroup("pi-x", 100)


def test_a_bad_device_name_is_refused_first():
    from kit.testbed.pi import start_pi

    with pytest.raises(EdgeKitError, match="device name"):
        start_pi("bad name!")


def test_delay_proxy_holds_each_direction_back():
    from kit.testbed.delay_proxy import DelayProxy

    srv = socket.create_server(("127.0.0.1", 0))

    def echo():
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    proxy = DelayProxy(srv.getsockname(), delay_s=0.2).start()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as c:
            t0 = time.monotonic()
            c.sendall(b"ping")
            assert c.recv(16) == b"ping"
            assert time.monotonic() - t0 >= 0.39  # 0.2 s out + 0.2 s back
    finally:
        proxy.stop()
        srv.close()


def test_sshd_factory_without_sshd_says_so(tmp_path, monkeypatch):
    from kit.testbed import sshd

    monkeypatch.setattr(sshd, "have_sshd", lambda: False)
    told: list[str] = []
    with pytest.raises(sshd.SshdMissing, match="openssh-server"):
        sshd.SshdFactory(tmp_path, on_missing=told.append).start(1)
    assert told == [sshd.SSHD_MISSING]
