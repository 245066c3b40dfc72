"""What a home believes: whose key is whose, which routes are proven, and which signatures hold.

No system in the tree is trusted beyond what it can prove (SPEC.md, Trust).

- Keys are pinned (``keys``): a host's public key is remembered the first time
  it is seen, or only as an administrator enrolled it (``KeyPinning STRICT``).
  A known lower system that checks in with another key is refused and its
  offer kept (``key_changes``) until ``rdslink --accept HOST``; a host further
  below with another key is refused and logged (its direct upper system holds
  the offer; here ``rdslink -e HOST KEY`` enrols the new key).
- Routes are proven (``statements``): at each check-in every host signs
  "I check in to UPPER" with a counter that only grows, and relays pass up
  their subtree's latest statements.  "H is reached through lower system L"
  is believed only when H's statement, and those of the hosts between, lead
  to L.  A newer statement replaces an older one; an unchanged one is not
  checked again.
- The managing server signs every manifest (all its fields but the
  signature) and every job (number, type, destination, package, creation
  time and the digest of its manifest); the hosts below check both with the
  managing server's key (``ManagerKey``, else pinned at the first check-in,
  ``believed``).
- A result is signed by the host it is about, and believed whichever lower
  system carries it (one that the host left can delay it, not forge it); a
  relay signs only EXEC-ERROR and LINE-DOWN about a host proven below it, and
  is believed only while the host is proven below it.

Only this module writes ``keys``, ``key_changes``, ``statements`` and ``believed``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rds import codes, identity
from rds.database import Transaction
from rds.errors import ProtocolError, Refused
from rds.identity import Identity, fingerprint
from rds.jobs import Job
from rds.packages import Manifest
from rds.results import Result
from rds.settings import Settings, valid_hostname

Log = Callable[[str], None]
MAX_STATEMENTS = 1_000_000
RELAYED = (codes.EXEC_ERROR, codes.LINE_DOWN)  # what a relay may say about a host below it
_CHUNK = 500


# -- manifests and jobs (signed by the managing server) ---------------------------------------------------

def manifest_digest(m: Manifest) -> str:
    return hashlib.sha256(m.signed_bytes).hexdigest()


def sign_manifest(me: Identity, m: Manifest) -> Manifest:
    return dataclasses.replace(m, signature=me.sign(m.body()))


def job_body(job: Job, m: Manifest, digest: str | None = None) -> dict[str, Any]:
    """What the managing server signs for a job: its job-control fields (attempt, not before) too."""
    return {"kind": "job", "job": job.job_no, "dest": job.dest, "type": job.type, "package": str(job.package),
            "created": job.created, "manifest": digest or manifest_digest(m), **job.control()}


def sign_job(me: Identity, job: Job, m: Manifest) -> Job:
    return dataclasses.replace(job, sig=me.sign(job_body(job, m)))


def sign_jobs(me: Identity, found: Sequence[Job], m: Manifest) -> list[Job]:
    """``sign_job`` of many jobs of one package (dcmjexe to 100,000 hosts): the digest once, every CPU."""
    digest = manifest_digest(m)
    sigs = me.sign_many([job_body(j, m, digest) for j in found])
    return [dataclasses.replace(j, sig=s) for j, s in zip(found, sigs, strict=True)]


def manifest_fault(key: str, m: Manifest) -> str | None:
    """Why ``m`` is not the managing server's (``key``'s) manifest, or None when it is."""
    if not m.signature:
        return f"the manifest of {m.id} is not signed by the managing server"
    if not identity.verify_bytes(key, m.signed_bytes, m.signature):
        return f"the manifest of {m.id} does not verify with the managing server's key (altered on the way?)"
    return None


def job_fault(key: str | None, job: Job, m: Manifest | None) -> str | None:
    """Why ``job`` (with its manifest) is not the managing server's, or None when it is."""
    if key is None:
        return f"job {job.key} came with no managing server's key to check it (set ManagerKey)"
    if m is None or m.id != job.package:
        return f"job {job.key} came without the manifest of {job.package}"
    if not job.sig or not identity.verify(key, job_body(job, m), job.sig):
        return f"job {job.key} does not verify with the managing server's key (forged or altered on the way?)"
    return manifest_fault(key, m)


def signer_key(home_settings: Settings, db: sqlite3.Connection, me: Identity | None = None) -> str | None:
    """The managing server's key as this home believes it (its own, on the managing server)."""
    if home_settings.is_managing_server:
        return me.public if me is not None else None
    if home_settings.manager_key:
        return home_settings.manager_key
    name = _believed(db, "signer")
    return None if name is None else pinned(db, name)


def signer_name(db: sqlite3.Connection) -> str | None:
    return _believed(db, "signer")


def learn_signer(settings: Settings, db: sqlite3.Connection, offered: Any, where: str, log: Log) -> str | None:
    """The managing server's key, pinned from the upper system's first answer (or ``ManagerKey``); None
    while no one above knows it (a tree that assembles from below: no job comes then).

    A key other than the pinned one is refused (and kept until accepted);
    the pass then takes no job at all.
    """
    if settings.manager_key:
        return settings.manager_key
    if not isinstance(offered, dict) or not isinstance(offered.get("host"), str) \
            or not valid_hostname(offered["host"]) or not identity.valid_key(offered.get("key")):
        return signer_key(settings, db)
    name, key = offered["host"], offered["key"]
    held_name = _believed(db, "signer")
    held = None if held_name is None else pinned(db, held_name)
    if held is None:
        with Transaction(db):
            _pin(db, name, key, enrolled=False)
            db.execute("INSERT OR REPLACE INTO believed (name, value) VALUES ('signer', ?)", (name,))
        log(f"pinned the managing server {name}'s key {fingerprint(key)}, as {where} gave it")
        return key
    if key != held or name != held_name:
        _offer(db, held_name or name, key, where)
        raise Refused(f"{where} gives the managing server's key as {name} {fingerprint(key)}, but {held_name} "
                      f"{fingerprint(held)} is pinned here; no job is taken until an administrator runs "
                      f"'rdslink --accept {held_name}'")
    return held


# -- keys -----------------------------------------------------------------------------------------------

def pinned(db: sqlite3.Connection, host: str) -> str | None:
    row = db.execute("SELECT key FROM keys WHERE host=?", (host,)).fetchone()
    return None if row is None else str(row[0])


def _pin(db: sqlite3.Connection, host: str, key: str, enrolled: bool) -> None:
    _changed(db)
    db.execute("INSERT INTO keys (host, key, since, enrolled) VALUES (?, ?, ?, ?) ON CONFLICT(host) DO UPDATE"
               " SET key=excluded.key, since=excluded.since, enrolled=max(enrolled, excluded.enrolled)",
               (host, key, time.time(), int(enrolled)))
    db.execute("DELETE FROM key_changes WHERE host=? AND key=?", (host, key))


def _offer(db: sqlite3.Connection, host: str, key: str, via: str) -> None:
    with Transaction(db):
        db.execute("INSERT OR REPLACE INTO key_changes (host, key, via, seen) VALUES (?, ?, ?, ?)",
                   (host, key, via, time.time()))


def enroll(db: sqlite3.Connection, host: str, key: str) -> str | None:
    """An administrator gives ``host``'s key; returns the key it replaces, if another."""
    if not valid_hostname(host) or not identity.valid_key(key):
        raise ProtocolError(f"enrolling {host!r}: not a host name and an Ed25519 key in base64")
    with Transaction(db):
        old = pinned(db, host)
        _pin(db, host, key, enrolled=True)
        if old is not None and old != key:
            db.execute("DELETE FROM statements WHERE host=?", (host,))  # its counter starts again
    return old if old != key else None


def accept(db: sqlite3.Connection, host: str) -> tuple[str | None, str]:
    """Accept the key ``host`` last offered in place of the pinned one; returns (old, new)."""
    row = db.execute("SELECT key FROM key_changes WHERE host=?", (host,)).fetchone()
    if row is None:
        raise ProtocolError(f"{host} offered no new key here")
    new = str(row[0])
    with Transaction(db):
        old = pinned(db, host)
        _pin(db, host, new, enrolled=False)  # an enrolled host stays enrolled
        db.execute("DELETE FROM statements WHERE host=?", (host,))  # a new key counts again
    return old, new


def changes(db: sqlite3.Connection) -> dict[str, tuple[str | None, str, str]]:
    """Hosts whose offered key is refused: host -> (pinned key, offered key, who brought it)."""
    rows = db.execute("SELECT c.host, k.key, c.key, c.via FROM key_changes c LEFT JOIN keys k ON k.host = c.host")
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def keys(db: sqlite3.Connection) -> dict[str, tuple[str, bool]]:
    return {r[0]: (r[1], bool(r[2])) for r in db.execute("SELECT host, key, enrolled FROM keys")}


def forget_routes(db: sqlite3.Connection, lower: str) -> int:
    """Revoke ``lower``: its routes and its statements go (rdslink -d)."""
    with Transaction(db):
        hosts = [r[0] for r in db.execute("SELECT host FROM routes WHERE via=?", (lower,))]
        _changed(db)
        db.execute("DELETE FROM routes WHERE via=?", (lower,))
        db.execute("DELETE FROM lowers WHERE name=?", (lower,))
        db.executemany("DELETE FROM statements WHERE host=?", [(h,) for h in hosts])
    return len(hosts)


def forget_host(db: sqlite3.Connection, host: str) -> None:
    """An administrator removed ``host`` (dcmhosts -d, rdssys -u): its pin, offer and statement go;
    call inside a transaction."""
    _changed(db)
    for table in ("keys", "key_changes", "statements"):
        db.execute(f"DELETE FROM {table} WHERE host=?", (host,))


def _believed(db: sqlite3.Connection, name: str) -> str | None:
    row = db.execute("SELECT value FROM believed WHERE name=?", (name,)).fetchone()
    return None if row is None else str(row[0])


# -- route statements -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Statement:
    host: str
    upper: str
    n: int
    key: str
    sig: str

    def body(self) -> dict[str, Any]:
        return {"kind": "route", "host": self.host, "upper": self.upper, "n": self.n, "key": self.key}

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "sig": self.sig}

    @classmethod
    def from_json(cls, d: Any) -> Statement:
        try:
            s = cls(d["host"], d["upper"], d["n"], d["key"], d["sig"])
            if not isinstance(s.host, str) or not valid_hostname(s.host) or not isinstance(s.upper, str) \
                    or not valid_hostname(s.upper) or s.host == s.upper:
                raise ValueError("host names")
            if not isinstance(s.n, int) or isinstance(s.n, bool) or not 0 < s.n < 2**63:
                raise ValueError("counter")
            if not identity.valid_key(s.key) or not isinstance(s.sig, str) or len(s.sig) != identity.SIG_CHARS:
                raise ValueError("key or signature")
            return s
        except (TypeError, KeyError, ValueError) as e:
            raise ProtocolError(f"not a valid route statement: {str(e)[:200]}") from None


def _chunks(db: sqlite3.Connection, query: str, hosts: Sequence[str]) -> Iterable[Any]:
    for i in range(0, len(hosts), _CHUNK):
        part = hosts[i:i + _CHUNK]
        yield from db.execute(query.replace("?*", ",".join("?" * len(part))), part)


def _stored(db: sqlite3.Connection, hosts: Sequence[str]) -> dict[str, Statement]:
    return {r[0]: Statement(*r) for r in _chunks(db, "SELECT host, upper, n, key, sig FROM statements"
                                                     " WHERE host IN (?*)", hosts)}


def _pins(db: sqlite3.Connection, hosts: Sequence[str]) -> dict[str, str]:
    return dict(_chunks(db, "SELECT host, key FROM keys WHERE host IN (?*)", hosts))


def last_upper(me: Identity, db: sqlite3.Connection, host: str) -> str | None:
    """The upper system this host's stored statement names (its last check-in's), if it is still this
    host's key: a check-in to it can be sent before its hello says its name (rds.poller)."""
    old = _stored(db, [host]).get(host)
    return old.upper if old is not None and old.key == me.public else None


def own_statement(me: Identity, db: sqlite3.Connection, host: str, upper: str) -> Statement:
    """This host's statement for a check-in to ``upper``: the last one while nothing changed, else a
    new one with a greater counter (milliseconds, so that a home that lost its database still counts up)."""
    old = _stored(db, [host]).get(host)
    if old is not None and old.upper == upper and old.key == me.public:
        return old
    n = max(old.n + 1 if old else 1, int(time.time() * 1000))
    body = {"kind": "route", "host": host, "upper": upper, "n": n, "key": me.public}
    s = Statement(host, upper, n, me.public, me.sign(body))
    with Transaction(db):
        _put(db, [s])
        if old is None or old.upper != upper:  # a new upper system has had none of them, nor what
            db.execute("UPDATE statements SET sent=NULL")  # the hosts below said of themselves (rds.hosts)
            db.execute("UPDATE routes SET told=NULL")
    return s


def _put(db: sqlite3.Connection, items: Iterable[Statement]) -> None:
    """Keep statements as the latest believed; each is to be sent up again (``sent`` NULL)."""
    _changed(db)
    db.executemany("INSERT OR REPLACE INTO statements (host, upper, n, key, sig) VALUES (?, ?, ?, ?, ?)",
                   [(s.host, s.upper, s.n, s.key, s.sig) for s in items])


def elsewhere(db: sqlite3.Connection, hosts: Sequence[str], lower: str) -> list[dict[str, Any]]:
    """The statements believed here of those of ``hosts`` (claimed by ``lower``, not proven) that lead
    through another lower system now: sent back to ``lower``, which believes them only as their hosts
    signed them (``left``) and stops holding their jobs."""
    return [Statement(*r[:5]).to_json() for r in _chunks(
        db, "SELECT s.host, s.upper, s.n, s.key, s.sig, r.via FROM statements s JOIN routes r ON r.host = s.host"
            " WHERE s.host IN (?*)", list(hosts)) if r[5] != lower][:MAX_STATEMENTS]


def left(db: sqlite3.Connection, own_host: str, said: Sequence[Any]) -> list[str]:
    """The hosts below this one that moved away, as the upper system says (``elsewhere``): believed only
    for a statement that verifies with the key pinned here, is newer than the one believed here and names
    another upper system; it is kept as the latest.  Returns those hosts."""
    items = []
    for d in said:
        with contextlib.suppress(ProtocolError):  # one that is not a statement proves nothing
            items.append(Statement.from_json(d))
    stored = _stored(db, [s.host for s in items])
    pins = _pins(db, [s.host for s in items])
    gone = [s for s in items if s.host in stored and s.n > stored[s.host].n and s.upper != stored[s.host].upper
            and s.host != own_host and pins.get(s.host) == s.key and identity.verify(s.key, s.body(), s.sig)]
    if gone:
        with Transaction(db):
            _put(db, gone)
    return [s.host for s in gone]


def statements_up(db: sqlite3.Connection, own: Statement, subtree: Sequence[str],
                  upper: str) -> tuple[list[dict[str, Any]], list[str]]:
    """What a check-in to ``upper`` carries: this host's statement, the latest statements of the hosts
    below it that ``upper`` has not had yet, and the names of every host below it."""
    names = [h for h in subtree if h != own.host] if own.host in subtree else list(subtree)
    rows = db.execute("SELECT host, upper, n, key, sig FROM statements WHERE sent IS NULL ORDER BY host").fetchall()
    below = set(names) if rows else set()
    return [own.to_json(), *(Statement(*r).to_json() for r in rows if r[0] in below)], names


def sent(db: sqlite3.Connection, upper: str, statements: Sequence[dict[str, Any]],
         unproven: Sequence[str]) -> None:
    """``upper`` took this check-in: the statements it carried need not go again, but those of the
    hosts it could not prove must (it lost them, or refused them: it hears of them again)."""
    if not unproven and len(statements) == 1 and db.execute(
            "SELECT 1 FROM statements WHERE host=? AND sent IS NOT NULL", (statements[0]["host"],)).fetchone():
        return  # nothing changed: no commit
    with Transaction(db):
        db.executemany("UPDATE statements SET sent=? WHERE host=? AND sig=?",
                       [(upper, d["host"], d["sig"]) for d in statements])
        db.executemany("UPDATE statements SET sent=NULL WHERE host=?", [(h,) for h in unproven])


def prove(db: sqlite3.Connection, settings: Settings, own_host: str, lower: str, items: Any, names: Any,
          log: Log) -> tuple[list[str], list[str]]:
    """The hosts a check-in of ``lower`` proves to be reached through it (``lower`` first), and the
    hosts it names that are not proven.

    ``items`` are the statements the check-in carries, ``names`` every host
    it says is below ``lower``; a host without a statement in ``items`` is
    proven by the one believed here already.  Each new statement must verify
    with its host's pinned key (pinned now if the host is new and pinning is
    not strict); a claim that does not lead to ``lower`` is refused and
    logged with both names.  ``lower``'s own statement must name this host as
    its upper system, or the whole check-in is refused.
    """
    if not isinstance(names, list) or len(names) > MAX_STATEMENTS:
        raise ProtocolError("'below' must be a list of host names")
    if isinstance(items, list) and len(items) == 1 and (same := _unchanged(db, own_host, lower, items[0], names)):
        return same, []
    for h in names:
        if not isinstance(h, str) or not valid_hostname(h):
            raise ProtocolError(f"'below' holds a bad host name: {h if not isinstance(h, str) else repr(h[:80])}"[:200])
    if not isinstance(items, list) or len(items) > MAX_STATEMENTS:
        raise ProtocolError("'statements' must be a list of signed route statements")
    claims: dict[str, Statement] = {}
    for d in items:
        s = Statement.from_json(d)
        claims[s.host] = s  # a host listed twice: the last counts (and must still prove itself)
    own = claims.get(lower)
    if own is None:
        raise Refused(f"{lower} checked in without its own signed route statement")
    if own.upper != own_host:
        raise Refused(f"{lower}'s route statement names {own.upper} as its upper system, not {own_host}")
    listed = list(claims)
    stored = _stored(db, listed)
    pins = _pins(db, listed)
    strict = settings.key_pinning == "STRICT"
    fresh: list[Statement] = []
    new_pins: list[tuple[str, str]] = []
    offers: list[tuple[str, str]] = []
    refused: dict[str, str] = {}
    for h, s in claims.items():
        if h == own_host:
            refused[h] = f"{lower} claims {h}, this host itself"
            continue
        old = stored.get(h)
        if old == s:
            continue  # the statement believed already: not checked again
        if old is not None and s.n <= old.n:
            continue  # an older statement (the host has moved since): the newer one stands
        key = pins.get(h)
        if key is None and strict:
            refused[h] = (f"{lower} brought {h} with key {fingerprint(s.key)}, which is not enrolled here "
                          f"(KeyPinning STRICT; enrol it with 'rdslink -e {h} KEY')")
            continue
        if key is not None and key != s.key:
            if h == lower:  # the lower system itself, through its own SSH key: its offer is kept to accept
                refused[h] = (f"{h} offers the host key {fingerprint(s.key)}, but {fingerprint(key)} is pinned; "
                              f"its jobs wait until an administrator runs 'rdslink --accept {h}'")
                offers.append((h, s.key))
            else:  # a host further below: only its direct upper system can tell, so the key must be enrolled
                refused[h] = (f"{lower} brought {h} with the host key {fingerprint(s.key)}, but {fingerprint(key)} "
                              f"is pinned; if {h}'s key really changed, enrol it with 'rdslink -e {h} KEY'")
            continue
        if not identity.verify(s.key, s.body(), s.sig):
            refused[h] = f"{lower} brought a statement of {h} that does not verify with its key; refused"
            continue
        fresh.append(s)
        if key is None:
            new_pins.append((h, s.key))
    if lower in refused:
        for h, key in offers:
            _offer(db, h, key, lower)
        log(f"refused the check-in of {lower}: {refused[lower]}")
        raise Refused(refused[lower])
    if fresh or new_pins or offers:
        with Transaction(db):
            for h, key in new_pins:
                _pin(db, h, key, enrolled=False)
            _put(db, fresh)
        for h, key in new_pins:
            log(f"pinned the key of {h}, {fingerprint(key)}, first seen through {lower}")
    others = [h for h in dict.fromkeys(names) if h not in claims]
    upper_of = dict(_chunks(db, "SELECT host, upper FROM statements WHERE host IN (?*)", others))
    upper_of.update((h, s.upper) for h, s in stored.items())
    upper_of.update((s.host, s.upper) for s in fresh)
    if upper_of.get(lower) != own_host:
        why = f"{lower} sent an older route statement than the one believed here (it checks in elsewhere now)"
        log(f"refused the check-in of {lower}: {why}")
        raise Refused(why)
    proven = [lower]
    unproven = []
    for h in [*listed, *others]:
        if h == lower or h in refused:
            continue
        if h not in upper_of:
            refused[h] = f"{lower} claims {h} below it without a statement of {h} believed here"
        elif _leads_to(upper_of, h, lower, own_host) is None:
            refused[h] = (f"{lower} claims {h} below it, but {h}'s own statement leads through "
                          f"{upper_of.get(h)} elsewhere; refused")
        else:
            proven.append(h)
            continue
        unproven.append(h)
    for why in refused.values():
        log(f"route refused: {why}")
    if not refused:  # the next check-in that names the same hosts is proven as this one
        seal = _seal(db, own, names)
        with Transaction(db):
            db.execute("INSERT OR REPLACE INTO believed (name, value) VALUES (?, ?)", (f"proof:{lower}", seal))
    return proven, unproven


def _unchanged(db: sqlite3.Connection, own_host: str, lower: str, item: Any, names: list[Any]) -> list[str] | None:
    """What a check-in that carries only ``lower``'s own statement proves when nothing changed since its
    last proof (``lower`` first, then ``names``: the very names checked then); None otherwise."""
    try:
        own = Statement.from_json(item)
    except ProtocolError:
        return None
    if own.host != lower or own.upper != own_host or not _sealed(db, own, names):
        return None
    return list(dict.fromkeys([lower, *names]))


def _digest(own: Statement, names: list[Any]) -> str | None:
    """The digest of ``own``'s signature and ``names``, or None unless they are strings without a newline
    (so that no other list of names gives the same digest)."""
    try:
        text = "\n".join([own.sig, *names])
    except TypeError:
        return None
    if text.count("\n") != len(names):
        return None
    return hashlib.sha256(text.encode(errors="surrogatepass")).hexdigest()


def _seal(db: sqlite3.Connection, own: Statement, names: list[str]) -> str:
    """What a proof of ``names`` below ``own.host`` rests on: its own statement, the names, and the
    generation of everything believed here (any statement or key that changes makes a new one)."""
    return f"{_believed(db, 'generation') or 0}:{_digest(own, names)}"


def _sealed(db: sqlite3.Connection, own: Statement, names: list[Any]) -> bool:
    """Whether ``own.host``'s last proof rests on what this check-in says (one query for both values):
    then ``names`` are the very names checked when it was proven."""
    digest = _digest(own, names)
    if digest is None:
        return False
    got = dict(db.execute("SELECT name, value FROM believed WHERE name IN ('generation', ?)", (f"proof:{own.host}",)))
    return got.get(f"proof:{own.host}") == f"{got.get('generation', 0)}:{digest}"


def _changed(db: sqlite3.Connection) -> None:
    """Something believed changed: every proof sealed before is to be made again.  Call in a transaction."""
    db.execute("INSERT INTO believed (name, value) VALUES ('generation', '1') ON CONFLICT(name) DO UPDATE"
               " SET value=CAST(value AS INTEGER) + 1")


def _leads_to(upper_of: dict[str, str], host: str, lower: str, own_host: str) -> list[str] | None:
    """The hosts from ``host`` up to ``lower`` by the believed statements, or None if they lead elsewhere."""
    path = [host]
    h = host
    for _ in range(len(upper_of) + 1):
        up = upper_of.get(h)
        if up is None or up == own_host:
            return None
        if up == lower:
            return path
        if up in path:
            return None  # a loop
        path.append(up)
        h = up
    return None


def below(db: sqlite3.Connection, host: str, by: str) -> bool:
    """Whether the believed statements lead from ``host`` up to ``by``."""
    seen: set[str] = set()
    h = host
    while h not in seen:
        seen.add(h)
        row = db.execute("SELECT upper FROM statements WHERE host=?", (h,)).fetchone()
        if row is None:
            return False
        if row[0] == by:
            return True
        h = row[0]
    return False


# -- results --------------------------------------------------------------------------------------------

def sign_result(me: Identity, host: str, r: Result) -> Result:
    r = Result.from_json({**r.to_json(), "by": host, "sig": ""})  # as the upper system will read it
    r = dataclasses.replace(r, by=host)
    return dataclasses.replace(r, sig=me.sign(r.body()))


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a reported result is not believed here; ``lasting`` when it never will be (unsigned, forged, a
    late attempt's, of a job that does not exist at the managing server, about a host proven elsewhere).
    Any other refusal may pass (a route, key or job this host does not know yet, the bound on what waits to
    go up): the lower system keeps that result and sends it again."""

    reason: str
    lasting: bool = True

    def __str__(self) -> str:
        return self.reason


def result_faults(db: sqlite3.Connection, lower: str, results: Sequence[Result], own_host: str,
                  route_of: Callable[[str], str | None], passes_up: bool = False) -> list[Refusal | None]:
    """Why each of ``results``, reported by ``lower``, is not believed here (None: it is).

    An outcome signed by its destination proves itself whoever carries it:
    a relay that its host left since can delay it, not forge it.  What a
    relay says on its own authority is believed only for a host proven below
    it now.  A relay (``passes_up``) also takes the own outcome of a host of
    ``lower``'s subtree of a job it never held (the host, or a relay above it,
    moved here after the relay it left was handed the job), at most
    ``FOREIGN_MAX`` waiting to go up per lower system, to pass it up; the
    managing server checks it again with the key it holds.  The checks
    against what is known here come first; the signatures of those that pass
    are then checked together (rds.identity.verify_many).
    """
    faults: list[Refusal | None] = []
    checks: list[tuple[str, dict[str, Any], str]] = []
    waiting: list[int] = []
    foreign: dict[str, int] = {}  # per lower system, the outcomes of jobs not held here that wait to go up
    for r in results:
        fault = _known_fault(db, lower, r, own_host, route_of, foreign if passes_up else None)
        key = pinned(db, r.by) if fault is None else None
        if fault is None and key is None:
            fault = Refusal(f"{lower} reported a result for job {r.job_no}:{r.dest} signed by {r.by}, "
                            f"whose key is not known", lasting=False)
        faults.append(fault)
        if fault is None and key is not None:
            waiting.append(len(faults) - 1)
            checks.append((key, r.body(), r.sig))
    for i, good in zip(waiting, identity.verify_many(checks), strict=True):
        if not good:
            r = results[i]
            faults[i] = Refusal(f"{lower} reported a result for job {r.job_no}:{r.dest} that does not verify "
                                f"with {r.by}'s key")
    return faults


FOREIGN_MAX = 1000  # a relay keeps at most this many outcomes per lower system of jobs it never held, to pass up


def _not_below(lower: str, host: str, route_of: Callable[[str], str | None]) -> Refusal:
    """``host`` is not below ``lower``: for good when it is proven below another system here, else not yet."""
    return Refusal(f"{lower} reported a result for {host}, which is not below it", lasting=route_of(host) is not None)


def _known_fault(db: sqlite3.Connection, lower: str, r: Result, own_host: str,
                 route_of: Callable[[str], str | None], foreign: dict[str, int] | None) -> Refusal | None:
    if r.dest == own_host:
        return Refusal(f"{lower} reported a result for {r.dest}, which is not below it")
    if not r.sig or not r.by:
        return Refusal(f"{lower} reported an unsigned result for job {r.job_no}:{r.dest}")
    row = db.execute("SELECT try FROM jobs WHERE job_no=? AND dest=?", (r.job_no, r.dest)).fetchone()
    if row is not None and r.attempt < row[0]:
        return Refusal(f"{lower} reported a result of attempt {r.attempt} of job {r.job_no}:{r.dest}, "
                       f"which is at attempt {row[0]}: late")
    here = row is not None
    missing = Refusal(f"{lower} reported a result for job {r.job_no}:{r.dest}, which does not exist here",
                      lasting=foreign is None)  # a relay may be handed the job later
    under = r.dest == lower or route_of(r.dest) == lower
    if r.by == r.dest:  # the destination's own word (its signature is checked next)
        if here:
            return None
        if not under:
            return _not_below(lower, r.dest, route_of)
        if foreign is None:
            return missing
        if lower not in foreign:
            foreign[lower] = db.execute(
                "SELECT COUNT(*) FROM results r WHERE (dest=? OR dest IN (SELECT host FROM routes WHERE via=?))"
                " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.job_no=r.job_no AND j.dest=r.dest)",
                (lower, lower)).fetchone()[0]
        if foreign[lower] < FOREIGN_MAX:
            foreign[lower] += 1
            return None
        return Refusal(f"{lower} reported a result for job {r.job_no}:{r.dest}, which is not held here, and "
                       f"{FOREIGN_MAX} such results from {lower} wait to go up already", lasting=False)
    if not under:
        return _not_below(lower, r.dest, route_of)
    if not here:
        return missing
    # a relay may say DELETE (ID-INVALID) of a job it dropped before handing it on, when the
    # managing server withdrew it (rds.control); the destination's own outcome still replaces it
    withdrawn = r.status in codes.WITHDRAWN and db.execute(
        "SELECT 1 FROM withdrawn WHERE job_no=? AND dest=? AND status=?", (r.job_no, r.dest, r.status)
    ).fetchone() is not None
    if r.status not in RELAYED and not withdrawn:
        return Refusal(f"{lower} reported {r.status} for job {r.job_no}:{r.dest} signed by {r.by}, not by {r.dest}")
    if r.by != lower and route_of(r.by) != lower:
        return Refusal(f"{lower} reported a result signed by {r.by}, which is not below it",
                       lasting=route_of(r.by) is not None)
    if not below(db, r.dest, r.by):
        return Refusal(f"{r.by} reported {r.status} for {r.dest}, which is not proven below it", lasting=False)
    return None
