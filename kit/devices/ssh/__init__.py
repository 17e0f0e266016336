"""SSH devices: connection.py (connect, deadlines, exec, the agent call) and files.py (SFTP, atomic
upload, agent set-up, bundles) make up SshDevice; target.py resolves ~/.ssh/config."""

from kit.devices.ssh.connection import Deadlines
from kit.devices.ssh.files import SshDevice

__all__ = ["Deadlines", "SshDevice"]
