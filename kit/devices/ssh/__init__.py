"""SSH devices: connection (connect, deadlines, exec) and files (SFTP, atomic upload, forced push)."""

from kit.devices.ssh.transport import Deadlines, SshDevice

__all__ = ["Deadlines", "SshDevice"]
