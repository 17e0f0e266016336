"""Signing keys for the test session (packaging area).

`edgekit_signing_key` (session, autouse): a fresh ed25519 pair in a temporary folder, exported as
$EDGEKIT_SIGNING_KEY, so every `package()` in the suite signs with it, `LocalDevice` trusts it, and
`kit.package.signing.public_key_paths()` (what enrolment installs on SSH devices) returns its .pub.
Nothing touches ~/.config/edgekit. $EDGEKIT_HOME (the local agent's home: state.json, bundles/)
also points at a session folder, so replay state never leaks into the real home.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def edgekit_signing_key(tmp_path_factory):
    from kit.package.signing import init_keys

    pair = init_keys(tmp_path_factory.mktemp("signing-key") / "signing.ed25519")
    saved = {k: os.environ.get(k) for k in ("EDGEKIT_SIGNING_KEY", "EDGEKIT_HOME")}
    os.environ["EDGEKIT_SIGNING_KEY"] = str(pair.private)
    if not saved["EDGEKIT_HOME"]:
        os.environ["EDGEKIT_HOME"] = str(tmp_path_factory.mktemp("agent-home"))
    yield pair
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def other_signing_key(tmp_path_factory):
    """A second, untrusted key pair: bundles it signs must be refused."""
    from kit.package.signing import init_keys

    return init_keys(tmp_path_factory.mktemp("other-key") / "signing.ed25519")
