"""The lower system's side of the protocol (rds.wire): it asks its upper system through a Link.

A transport (rds.transport) opens the Link; ``UpperClient`` builds the
requests, checks the answers and turns error answers into the project's
errors.  ``fetch`` downloads a package into the storehouse, which resumes a
partial download and verifies it; of a chunked package, only the chunks this
host lacks, their byte ranges asked all at once (``Link.read_ranges``).  The upper system's side is rds.service.
"""

from __future__ import annotations

from typing import Any, Protocol

from rds import wire
from rds.errors import ProtocolError, RdsError
from rds.jobs import Job
from rds.packages import Manifest, PackageId
from rds.results import Result
from rds.settings import valid_hostname
from rds.storehouse import Storehouse


class Link(Protocol):
    """What a transport gives the lower system: one conversation with its upper."""

    def hello(self) -> str: ...  # the upper system's name, as it says it

    def send(self, msg: dict[str, Any]) -> None: ...  # a request whose answer ``receive`` reads later

    def receive(self) -> dict[str, Any]: ...  # the answer to the oldest request sent and not answered

    def call(self, msg: dict[str, Any]) -> dict[str, Any]: ...

    def read(self, package: str, offset: int, length: int, out: Any) -> None: ...

    def read_ranges(self, package: str, ranges: list[tuple[int, int]], out: Any) -> None: ...  # back to back

    def close(self) -> None: ...


class UpperClient:
    """The lower system's side: builds requests and checks answers."""

    def __init__(self, link: Link, host: str, where: str) -> None:
        self.link = link
        self.host = host
        self.where = where
        self.invalid: list[tuple[int, str]] = []
        self.unproven: list[str] = []
        self.moved: list[Any] = []  # route statements of hosts below that moved away, as the upper system has them
        self.controls: Any = []  # the managing server's control statements, checked by the caller (rds.control)
        self.resend: list[tuple[int, str]] = []
        self.signed: list[tuple[Job, Manifest]] = []  # signed copies of the jobs held here unsigned
        self.signer: Any = None  # the managing server's name and key, as the upper system says them
        self.verify: Any = None  # checks a manifest from the upper system (rds.trust via rds.poller)
        self.keep: float | None = None  # asked at each check-in: keep this session for a pass this long after
        self.kept = 0.0  # what the upper system answered: the seconds it keeps the session idle (0: not kept)

    def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        return self._reply(op, self.link.call(wire.request(op, self.host, **fields)))

    def _reply(self, op: str, reply: Any) -> dict[str, Any]:
        if not isinstance(reply, dict) or "ok" not in reply:
            raise ProtocolError(f"{self.where}: answered {op} with something that is not a reply")
        if not reply["ok"]:
            raise wire.exception(reply, self.where, op)
        return reply

    def checkin(self, statements: list[dict[str, Any]], below: list[str] | None = None,
                wake: str | None = None, unsigned: list[tuple[int, str]] | None = None,
                controls: dict[str, int] | None = None, hosts: dict[str, list[Any]] | None = None,
                ) -> tuple[list[Job], dict[str, Manifest]]:
        """Check in with the route statements the upper system has not had yet and the names of every host
        below (rds.trust); the jobs and manifests that come back are checked against the managing
        server's key by the caller, ``signer`` is what the upper system says that key is, and
        ``unproven`` the hosts below whose route it could not prove."""
        reply = self.link.call(wire.request("checkin", self.host, **_checkin_fields(
            statements, below, wake, unsigned, controls, hosts, self.keep)))
        return self._checkin_answer(reply)

    def send_checkin(self, statements: list[dict[str, Any]], below: list[str] | None = None,
                     wake: str | None = None, unsigned: list[tuple[int, str]] | None = None,
                     controls: dict[str, int] | None = None, hosts: dict[str, list[Any]] | None = None) -> None:
        """Send a check-in without waiting for the upper system's hello or the answer (read by
        ``checkin_answer``): the pipelined check-in of rds.poller, one round trip less."""
        self.link.send(wire.request("checkin", self.host, **_checkin_fields(
            statements, below, wake, unsigned, controls, hosts, self.keep)))

    def checkin_answer(self) -> tuple[list[Job], dict[str, Manifest]]:
        """The answer to the check-in ``send_checkin`` sent (read after the hello)."""
        return self._checkin_answer(self.link.receive())

    def _checkin_answer(self, reply: Any) -> tuple[list[Job], dict[str, Manifest]]:
        reply = self._reply("checkin", reply)
        self.controls = reply.get("controls", [])
        kept = reply.get("kept", 0)  # kept between passes (rds.transport.serve.Kept); anything odd: not kept
        self.kept = float(kept) if isinstance(kept, (int, float)) and not isinstance(kept, bool) \
            and 0 < kept <= 86400 else 0.0
        try:
            found = [Job.from_json(j) for j in reply.get("jobs", [])]
            manifests = {k: Manifest.from_json(v) for k, v in reply.get("manifests", {}).items()}
        except (RdsError, AttributeError, TypeError) as e:
            raise ProtocolError(f"{self.where}: bad check-in answer: {e}") from None
        try:  # jobs handed here whose package left the upper's storehouse (an older upper sends none)
            self.invalid = [(int(j), str(d)) for j, d in reply.get("invalid", [])]
        except (TypeError, ValueError, OverflowError):  # int(Infinity) overflows
            raise ProtocolError(f"{self.where}: bad check-in answer: 'invalid' is not a list of jobs") from None
        self.signer = reply.get("signer")
        unproven = reply.get("unproven", [])
        if not isinstance(unproven, list) or not all(isinstance(h, str) for h in unproven):
            raise ProtocolError(f"{self.where}: bad check-in answer: 'unproven' is not a list of host names")
        self.unproven = unproven
        moved = reply.get("moved", [])
        if not isinstance(moved, list) or len(moved) > len(unproven):
            raise ProtocolError(f"{self.where}: bad check-in answer: 'moved' is not a list of route statements")
        self.moved = moved  # checked by the caller (rds.trust.left)
        resend = reply.get("resend", [])
        try:  # results the upper system holds unsigned from before protocol 2 (rds.results.resend)
            if not isinstance(resend, list) or len(resend) > wire.RESEND_MAX:
                raise ValueError
            self.resend = [(int(j), str(d)) for j, d in resend]
            signed = reply.get("signed", [])
            if not isinstance(signed, list) or len(signed) > wire.RESEND_MAX:
                raise ValueError
            self.signed = [(Job.from_json(d), Manifest.from_json(d["manifest"])) for d in signed]
            if any(not 0 < j < 2**63 or not valid_hostname(d) for j, d in self.resend):
                raise ValueError
        except (TypeError, ValueError, OverflowError, KeyError, RdsError):
            raise ProtocolError(f"{self.where}: bad check-in answer: 'resend' or 'signed' is not a list of at "
                                f"most {wire.RESEND_MAX} jobs") from None
        return found, manifests

    def ack(self, taken: list[Job]) -> Any:
        """Acknowledge ``taken``; returns the control statements of those jobs (checked by the caller)."""
        if taken:
            return self._call("ack", jobs=[[j.job_no, j.dest] for j in taken]).get("controls", [])
        return []

    def forget(self) -> dict[str, Any]:
        """rdssys -u: ask the upper system to forget this host."""
        return self._call("forget")

    def report(self, items: list[Result]) -> int:
        """Send ``items``; returns how many the upper system took."""
        return self.report_each(items)[0]

    def report_each(self, items: list[Result]) -> tuple[int, int, set[tuple[int, str]]]:
        """Send ``items``; returns how many the upper system took, how many it refused, and the keys (job,
        dest) of those it refused for a reason that may pass, to send again (only keys of ``items``)."""
        reply = self._call("report", results=[r.to_json() for r in items])
        accepted, refused = reply.get("accepted", 0), reply.get("refused", 0)
        for n in (accepted, refused):
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ProtocolError(f"{self.where}: answered report with a bad count {str(n)[:40]!r}")
        keys = reply.get("later", [])
        if not isinstance(keys, list) or len(keys) > len(items):
            raise ProtocolError(f"{self.where}: answered report with a bad 'later' list")
        sent = {(r.job_no, r.dest) for r in items}
        later = {(k[0], k[1]) for k in keys if isinstance(k, list) and len(k) == 2 and isinstance(k[0], int)
                 and isinstance(k[1], str) and (k[0], k[1]) in sent}
        return accepted, min(refused, len(items)), later

    def stat(self, pid: PackageId) -> Manifest:
        """The upper system's current manifest of ``pid``."""
        reply = self._call("stat", package=str(pid))
        try:
            m = Manifest.from_json(reply.get("manifest"))
        except RdsError as e:
            raise ProtocolError(f"{self.where}: bad stat answer: {e}") from None
        if m.id != pid:
            raise ProtocolError(f"{self.where}: asked about {pid}, answered about {m.id}")
        if self.verify is not None:
            self.verify(m)  # never cached, fetched or served unless the managing server signed it
        return m

    def damaged(self, pid: PackageId, sha256: str) -> str:
        """Tell the upper system that its copy of ``pid`` (``sha256``) came here damaged; returns what it
        found: "removed", "intact" or "gone" (raises UnableToCache when it cannot fetch a good one)."""
        copy = self._call("damaged", package=str(pid), sha256=sha256).get("copy")
        return copy if copy in ("removed", "intact", "gone") else "gone"

    def fetch(self, store: Storehouse, manifest: Manifest) -> None:
        """Download a package into ``store``: resumed from what a cut left, hashed as it comes, verified,
        committed (rds.storehouse, ``receive``)."""
        package = str(manifest.id)
        if manifest.chunked:  # only the chunks not here, many ranges in one stream (rds.chunks)
            store.receive_chunks(manifest, lambda ranges, out: self.link.read_ranges(package, ranges, out),
                                 self.where)
            return
        store.receive(manifest, lambda offset, length, out: self.link.read(package, offset, length, out), self.where)


def _checkin_fields(statements: list[dict[str, Any]], below: list[str] | None, wake: str | None,
                    unsigned: list[tuple[int, str]] | None, controls: dict[str, int] | None,
                    hosts: dict[str, list[Any]] | None, keep: float | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {"statements": statements, "below": below or []}
    if keep is not None:  # keep the session for the next pass, expected this many seconds after this one
        fields["keep"] = keep
    if wake is not None:
        fields["wake"] = wake
    if controls is not None:
        fields["controls"] = controls
    if hosts is not None:
        fields["hosts"] = hosts
    if unsigned:  # jobs held here from before signatures: the answer's 'signed' has copies signed
        fields["unsigned"] = [list(k) for k in unsigned]
    return fields
