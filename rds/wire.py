"""The messages between a lower system and its upper system: their form and their errors.

The lower system always asks; the upper system answers.  Every request is a
JSON object with ``op``, the protocol version ``v`` and the asking ``host``
(``request``):

``checkin``  ``statements``: the signed route statements of the asker and of
             the hosts under it that the upper system has not had yet, and
             ``below``: the names of every host under it (rds.trust); ``wake``: where a startup
             request reaches the asker (optional): ``ssh://[user@]host[:port]``
             or the absolute path of its home (rds.startup); ``unsigned``: at most
             RESEND_MAX ``[job, dest]`` pairs of jobs the asker holds from before
             signatures (protocol 1), which it does not hand on; ``controls``: for
             each job not ended there, the number of the managing server's control
             statement it holds (rds.control); ``hosts``: for the asker and hosts
             under it, ``[version, last check-in]`` (rds.hosts); ``keep`` (over SSH):
             the seconds the asker expects to wait before its next pass, asking
             the upper system to keep the session for it (rds.transport.serve.Kept),
             which it answers with ``kept``, the seconds it will wait.  The upper system
             believes the routes the statements prove and answers with the
             jobs waiting for the asker's whole subtree and the manifests of
             their packages (both signed by the managing server), ``signer``:
             the managing server's name and key as the upper system believes
             them, ``invalid``: the jobs it handed the asker whose package
             has left its storehouse since (rds.cleanup), ``unproven``:
             the hosts named below whose route it could not prove, ``moved``:
             the newer route statements it believes of some of those, which
             lead elsewhere now (the asker believes one only if it verifies
             with the key it pinned, and drops that host's route and pending
             jobs: rds.trust.left), and
             ``resend`` (at most RESEND_MAX ``[job, dest]`` pairs, only from a
             relay): results of the asker's subtree the relay holds unsigned
             from before protocol 2, which the asker sends again, signed by
             their hosts (rds.results, docs/upgrade.md), ``signed``:
             signed copies of the ``unsigned`` jobs it handed the asker, each
             a job record with its ``manifest``, and ``controls``: the managing
             server's signed control statements (suspension, withdrawn
             destinations) newer than those the asker holds.
``ack``      ``jobs``: ``[job, dest]`` pairs now safely stored below; the upper
             system will not hand them out again.  The answer's ``controls``
             are the statements of those jobs (a withdrawal that crossed them).
``forget``   the asker leaves: the upper system forgets its route, the jobs held
             for it, its key and statement (rdssys -u; on a relay, only the relay).
``report``   ``results``: how jobs ended in the asker's subtree, each signed by
             the host it is about (or, for EXEC-ERROR and LINE-DOWN, by the
             relay above it); the answer counts those ``accepted`` (new) and
             ``refused`` (not believed, logged by the upper system), and lists
             as ``later`` the ``[job, dest]`` of those refused for a reason that
             may pass (rds.trust.Refusal), which the asker keeps to send again.
``read``     ``package``, ``offset``, ``length``: bytes of a package's archive
             (only a package that a job of the asker's subtree needs).  A relay
             that lacks the package, or whose copy is not current, fetches it
             from its own upper system first (rds.cache) while the asker waits.
``ranges``   ``package``, ``ranges``: ``[offset, length]`` pairs, at most
             MAX_RANGES, their lengths READ_MAX at most in all: those byte
             ranges of a chunked package's archive, back to back in one
             stream as for ``read`` (the chunks the asker lacks, rds.chunks).
``stat``     ``package``: the upper system's current ``manifest`` of a package
             (SHA-256 and size; authorized like ``read``).
``damaged``  ``package``, ``sha256``: the copy the asker downloaded did not
             match that SHA-256.  The upper system hashes its copy again and
             answers ``copy``: ``removed`` (damaged: removed, fetched again
             when asked), ``intact`` or ``gone``; or ``uncacheable`` when it
             cannot fetch a good copy (rds.cache).

Any request may carry ``alive``: seconds (ALIVE_MIN to ALIVE_MAX).  Over SSH,
while the upper system works on the answer (a relay fetching the package from
its own upper system before it can serve a ``read``), it sends a keep-alive
frame that often, so that the asker's idle timeout does not cut a long fetch
(transport.frames).

An answer is ``{"ok": true, ...}`` or ``{"ok": false, "error": KIND,
"message": ...}`` where KIND is ``refused``, ``protocol`` or ``uncacheable``
(the caching policy of a system on the way forbids fetching the package: the
jobs that need it end in ERROR), or ``upper`` when the upper system itself
failed (its home, its storehouse), which the lower system takes as a cut link.
``error_answer`` and ``upper_answer`` make them, ``exception`` reads them.

This module is where both sides meet: ``rds.service`` answers on the upper
system, ``rds.client`` asks on the lower one, and a transport carries the
messages: ``transport.local`` calls the upper home directly, the SSH transport
(``transport.link``) runs ``rds-serve`` (``transport.serve``) on the upper system.
"""

from __future__ import annotations

from typing import Any

from rds.errors import CommunicationError, InputError, ProtocolError, RdsError, Refused, UnableToCache

# 2: route statements, signed jobs, manifests and results (issue 12); 3: resend (issue 12, part 7), chunked
# packages, the ranges request (issue 17), keep-alive frames while the upper system works on an
# answer, asked for with ``alive`` (issue 16), and job control (issue 15)
VERSION = 4  # 4: manifests give each chunk's packed SHA-256 (issue 16)
RESEND_MAX = 1000  # results asked again in one check-in answer
READ_MAX = 64 << 20
MAX_RANGES = 4096  # byte ranges in one ``ranges`` request: a 1 KiB request per 100 KiB of chunks at worst
ALIVE_MIN, ALIVE_MAX = 0.5, 60.0  # bounds of a request's ``alive`` (seconds between keep-alive frames)
# The largest request rds-serve takes, refused from its header before it is read.  The largest
# legitimate one is a check-in from a host with 100,000 hosts below it, each with a signed
# statement of 100-300 bytes (issue 12): about 42 MB (tests/attacks.py, "largest").  Parsing a
# request costs rds-serve up to twice its size plus ~80 bytes per JSON value, so the values
# are bounded too (counted as brackets, braces, commas and colons, rds.transport.frames): at
# both limits a request costs rds-serve under 256 MiB RSS (bench/hostile measures it).
MAX_REQUEST = 48 << 20
MAX_REQUEST_VALUES = 1_500_000


def request(op: str, host: str, **fields: Any) -> dict[str, Any]:
    """A request of ``op`` from ``host``."""
    return {"op": op, "v": VERSION, "host": host, **fields}


def check(msg: Any, lower: str) -> str:
    """The request's op, once its form, version and asking host (it must be ``lower``) are checked."""
    if not isinstance(msg, dict):
        raise ProtocolError("a request must be a JSON object")
    host = msg.get("host")
    if msg.get("v") != VERSION:
        raise ProtocolError(mismatch(msg.get("v"), "the lower system", host if isinstance(host, str) else lower,
                                     "this upper system"))
    if host != lower:
        raise Refused(f"{lower} may not act as {host!r}")
    op = msg.get("op")
    if not isinstance(op, str):
        raise ProtocolError("a request needs an op")
    return op


def alive(msg: dict[str, Any]) -> float | None:
    """How often the asker wants keep-alive frames while its answer is prepared; None: never."""
    value = msg.get("alive")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ALIVE_MIN <= value <= ALIVE_MAX:
        raise ProtocolError(f"'alive' must be a number of seconds from {ALIVE_MIN:g} to {ALIVE_MAX:g}")
    return float(value)


def mismatch(theirs: Any, them: str, name: str, us: str) -> str:
    """One line saying which side of a link must be upgraded: the one that speaks the older protocol."""
    if isinstance(theirs, int) and not isinstance(theirs, bool) and theirs > VERSION:
        return f"{them} {said(name)[:64]} speaks protocol {theirs}, {us} speaks {VERSION}: upgrade rds on {us}"
    return (f"{them} {said(name)[:64]} speaks protocol {said(theirs)[:20]}, {us} speaks {VERSION}: "
            f"upgrade rds on {them} {said(name)[:64]}")


# the errors a lower system is told of in an answer (rds-serve turns any other into "upper")
ANSWERED = (UnableToCache, Refused, ProtocolError, InputError)


def error_answer(e: Exception) -> dict[str, Any]:
    """The answer that tells the lower system of ``e``, one of ANSWERED."""
    kind = "uncacheable" if isinstance(e, UnableToCache) else "refused" if isinstance(e, Refused) else "protocol"
    return {"ok": False, "error": kind, "message": str(e)}


def upper_answer(message: str) -> dict[str, Any]:
    """The answer that says the upper system itself failed."""
    return {"ok": False, "error": "upper", "message": message}


def exception(answer: dict[str, Any], where: str, what: str) -> RdsError:
    """The error an error answer to ``what`` from ``where`` stands for (error_answer's and upper_answer's reverse)."""
    kind, message = answer.get("error"), said(answer.get("message", ""))
    if kind == "refused":
        return Refused(f"{where} refused {what}: {message}")
    if kind == "uncacheable":
        return UnableToCache(message)
    if kind == "upper":
        return CommunicationError(f"{where}: {message}")
    return ProtocolError(f"{where} rejected {what}: {message}")


def said(message: Any) -> str:
    """What the other system said, as one line of at most 500 characters: it may be hostile."""
    return " ".join(str(message).splitlines())[:500]
