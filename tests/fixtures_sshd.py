"""Real OpenSSH sshd "devices" on 127.0.0.1 for tests: the pytest fixtures over kit.testbed.sshd
(its docstring describes SshdFactory / SshdServer, the fault-injection handles).

    sshd_factory(n=1, forced_command=None, home=None, python=None) -> list[DeviceEntry]
        Function-scoped fixture (a kit.testbed.sshd.SshdFactory, callable). Every server it starts
        is stopped by PID when the test ends, pass or fail; the test is skipped without sshd.
        sshd_factory.servers[name] / sshd_factory.server(entry) -> SshdServer (fault injection).
    sshd_factory_module   the same callable, module-scoped (share one server across a module).
    sshd_device           a module-scoped DeviceEntry on its own sshd (the common case).
    ssh_keygen(name)      a fresh ed25519 private key in tmp_path (public key beside it, + '.pub').

Library names (SshdFactory, SshdServer, free_port, keygen, have_sshd, descendants, SSHD) are
re-exported here for older imports; new code imports them from kit.testbed.sshd.
"""

from __future__ import annotations

import pytest

from kit.devices import DeviceEntry
from kit.testbed.sshd import SSHD, SshdFactory, SshdServer, descendants, free_port, have_sshd, keygen

__all__ = ["SSHD", "SshdFactory", "SshdServer", "descendants", "free_port", "have_sshd", "keygen"]


@pytest.fixture
def sshd_factory(tmp_path):
    with SshdFactory(tmp_path / "sshd", on_missing=pytest.skip) as f:
        yield f


@pytest.fixture(scope="module")
def sshd_factory_module(tmp_path_factory):
    with SshdFactory(tmp_path_factory.mktemp("sshd"), on_missing=pytest.skip) as f:
        yield f


@pytest.fixture(scope="module")
def sshd_device(sshd_factory_module) -> DeviceEntry:
    return sshd_factory_module(1)[0]


@pytest.fixture
def ssh_keygen(tmp_path):
    """ssh_keygen(name) -> Path of a fresh ed25519 private key (public key beside it, + '.pub')."""
    return lambda name: keygen(tmp_path / name)
