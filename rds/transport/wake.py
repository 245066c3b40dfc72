"""Startup requests over SSH: the upper system's side of ``rds-wake``.

A lower system reached over SSH says at check-in where its sshd is
(``StartupAddress ssh://[user@]host[:port]``).  The upper system logs in there
with its own key (IdentityFile; the host key must be in KnownHostsFile, never
added), which the lower system's ``authorized_keys`` limits to one forced
command::

    restrict,command="rds-wake --home /NETMRDS" ssh-ed25519 AAAA... rds@manager

``rds-wake`` takes nothing from the caller but the moment: it waits until its
input says anything or ends, then wakes the home's rdsma (or starts
``rdsft -a``), prints one line ``rds-wake: HOW`` and exits.  So the upper
system can log in while it still fetches the package the lower system will
ask for (``open``), and only say "now" when it can serve it (``send``): the
connection, the login and the start of rds-wake are off the critical path.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from rds.errors import CommunicationError, ProtocolError
from rds.settings import Settings
from rds.transport import connection

WAKE = "rds-wake"
PREFIX = b"rds-wake: "
# rds-wake waits at most WAIT_MAX seconds for the word; a session prepared longer ago than HOLD
# is not trusted to still be waiting, and the request is sent on a new one.
HOLD = 60.0
MAX_OUTPUT = 4096


class WakeRequest:
    """One startup request to one lower system over SSH."""

    def __init__(self, settings: Settings, address: str, lower: str) -> None:
        self.settings = settings
        self.target = connection.Target.parse(address)
        self.where = f"lower system {lower} at {self.target.where}"
        self.client: Any = None
        self.chan: Any = None
        self.opened = 0.0

    def open(self) -> None:
        """Connect, check the host key, log in and start rds-wake, which then waits for the word."""
        import paramiko

        timeout = self.settings.connect_timeout
        client = connection.open_client(self.settings, self.target, self.where, "lower system")
        try:
            chan = client.get_transport().open_session(timeout=timeout)
            chan.settimeout(timeout)
            chan.exec_command(WAKE)  # the forced command replaces it: whatever is asked, rds-wake runs
        except (paramiko.SSHException, OSError, EOFError) as e:
            client.close()
            raise CommunicationError(f"{self.where}: SSH failed: {connection.reason(e)}") from None
        self.client, self.chan, self.opened = client, chan, time.monotonic()

    def send(self) -> str:
        """Say "now"; returns what rds-wake did, or raises CommunicationError."""
        if self.chan is not None and time.monotonic() - self.opened > HOLD:
            self.close()  # it may have given up waiting (and woken the lower system already): ask again
        if self.chan is None:
            self.open()
        try:
            return self._exchange()
        finally:
            self.close()

    def _exchange(self) -> str:
        import paramiko

        timeout = self.settings.connect_timeout
        out = b""
        try:
            if not self.chan.exit_status_ready():  # else it ended at start (no home?): read why
                with contextlib.suppress(OSError, EOFError):  # it may end just now; its output says how
                    self.chan.sendall(b"\n")
                    self.chan.shutdown_write()
            while len(out) < MAX_OUTPUT:
                data = self.chan.recv(MAX_OUTPUT)
                if not data:
                    break
                out += data
            status = self.chan.recv_exit_status() if self.chan.status_event.wait(timeout) else -1
            err = b""
            while self.chan.recv_stderr_ready() and len(err) < MAX_OUTPUT:
                err += self.chan.recv_stderr(MAX_OUTPUT)
        except TimeoutError:
            raise CommunicationError(f"{self.where}: rds-wake did not answer within {timeout:g}s "
                                     f"(ConnectTimeout)") from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise CommunicationError(f"{self.where}: SSH failed: {connection.reason(e)}") from None
        line = out.strip().splitlines()[-1] if out.strip() else b""
        if status == 0 and line.startswith(PREFIX):
            return line[len(PREFIX):].decode("utf-8", "replace")[:300]
        said = [s.strip() for s in err.decode("utf-8", "replace").splitlines() if s.strip()]
        if said:
            raise CommunicationError(f"{self.where}: {said[-1][:300]} (exit status {status})")
        if status == 0 or out:
            text = out[:80].decode("utf-8", "replace").strip()
            raise ProtocolError(f"{self.where}: the other side is not {WAKE} (it sent {text!r}, exit status "
                                f"{status}); check the forced command in the lower system's authorized_keys")
        raise CommunicationError(f"{self.where}: {WAKE} ended with exit status {status} and said nothing")

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):  # a link that is already broken
                self.client.close()
        self.client = self.chan = None
