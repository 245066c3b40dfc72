"""rdslink: set up the SSH side of a link, list and revoke lower systems, enrol and accept host keys."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rds.cli import entry, print_json, table, with_home
from rds.errors import InputError, ProtocolError, UsageError

if TYPE_CHECKING:
    from rds.database import Database
    from rds.home import Home


@click.command(name="rdslink", context_settings={"help_option_names": ["--help"]})
@click.option("-k", "mode_k", is_flag=True, help="On a lower system: make its SSH key (IdentityFile, else "
              "rdsprm/id_ed25519) and host key if missing, and print the enrolment line the upper system needs.")
@click.option("-a", "add", metavar="LINE", help="On an upper system: let the lower system of the enrolment LINE "
              "in, through its forced command rds-serve, and enrol its host key.")
@click.option("-w", "wake", metavar="LINE", help="On a lower system: let the upper system of the enrolment LINE "
              "send startup requests (its key forced to rds-wake).")
@click.option("-l", "mode_l", is_flag=True, help="List the lower systems: name, key fingerprints, last check-in, "
              "hosts routed through it.")
@click.option("-d", "revoke", metavar="NAME", help="Revoke the lower system NAME: its authorized_keys lines and "
              "its routes.")
@click.option("-e", "enrol", nargs=2, metavar="HOST KEY", help="Enrol HOST's host key (KEY as 'rdslink -k' "
              "prints it on HOST), for hosts further below and for KeyPinning STRICT.")
@click.option("--accept", "accept", metavar="HOST", help="Accept the new host key HOST offered (dcmstat and "
              "the log name both fingerprints).")
@click.option("-f", "keys_file", type=click.Path(path_type=Path, dir_okay=False), metavar="AUTHORIZED_KEYS",
              help="The authorized_keys file to edit (-a, -w, -d) or read (-l).")
@click.option("--from", "source", metavar="PATTERN", help="With -a or -w: accept the key only from these "
              "addresses (sshd's from=\"...\").")
@click.option("--program", metavar="PATH", help="With -a or -w: the absolute path of rds-serve or rds-wake "
              "(default: beside rdslink).")
@click.option("--json", "as_json", is_flag=True, help="With -l: print JSON for scripts.")
def command(mode_k: bool, add: str | None, wake: str | None, mode_l: bool, revoke: str | None,
            enrol: tuple[str, str] | None, accept: str | None, keys_file: Path | None, source: str | None,
            program: str | None, as_json: bool) -> int:
    """Set up the SSH side of a link between an upper and a lower system.

    \b
      rdslink -k                                   on the lower system
      rdslink -a LINE -f AUTHORIZED_KEYS           on the upper system
      rdslink -w LINE -f AUTHORIZED_KEYS           on the lower system, for startup requests
      rdslink -l [-f AUTHORIZED_KEYS] [--json]
      rdslink -d NAME -f AUTHORIZED_KEYS
      rdslink -e HOST KEY
      rdslink --accept HOST

    LINE is what 'rdslink -k' printed on the other system.  Editing is
    idempotent and replaces the file atomically.
    """
    from rds.settings import valid_hostname

    modes = [mode_k, add is not None, wake is not None, mode_l, revoke is not None, bool(enrol), accept is not None]
    if sum(modes) != 1:
        raise UsageError("give exactly one of -k, -a, -w, -l, -d, -e and --accept")
    if (add is not None or wake is not None or revoke is not None) and keys_file is None:
        raise UsageError("-a, -w and -d need -f AUTHORIZED_KEYS (the file sshd reads for the login user)")
    if (source is not None or program is not None) and add is None and wake is None:
        raise UsageError("--from and --program go with -a or -w")
    if as_json and not mode_l:
        raise UsageError("--json goes with -l")
    if revoke is not None and not valid_hostname(revoke):
        raise UsageError(f"-d {revoke!r}: not a host name")
    return act(mode_k, add, wake, mode_l, revoke, enrol, accept, keys_file, source, program, as_json)


@with_home(database=True)
def act(mode_k: bool, add: str | None, wake: str | None, mode_l: bool, revoke: str | None,
        enrol: tuple[str, str] | None, accept: str | None, keys_file: Path | None, source: str | None,
        program: str | None, as_json: bool, *, home: Home, db: Database) -> int:
    from rds import enrolment, trust
    from rds.identity import fingerprint
    from rds.log import logger

    log = logger(home).info
    if mode_k:
        offer, made = enrolment.keys(home)
        if made:
            click.echo(f"rdslink: made {enrolment.ssh_key_path(home)}", err=True)
        if home.settings.identity_file is None and (home.settings.managing_host or "").startswith("ssh://"):
            click.echo(f"rdslink: add 'IdentityFile\t{enrolment.ssh_key_path(home)}' to RDSSETFL", err=True)
        click.echo(str(offer))
        return 0
    if add is not None or wake is not None:
        assert keys_file is not None
        offer = enrolment.Offer.parse(add if add is not None else str(wake))
        if add is not None:
            line = enrolment.serve_line(offer, home, enrolment.program("rds-serve", program), source)
            state = enrolment.authorize(keys_file, line, offer, offer.host, home)
            replaced = trust.enroll(db, offer.host, offer.host_key)
            log(f"rdslink: lower system {offer.host} {state} in {keys_file}; host key {fingerprint(offer.host_key)}"
                + (f" replaces {fingerprint(replaced)}" if replaced else ""))
        else:
            line = enrolment.wake_line(offer, home, enrolment.program("rds-wake", program), source)
            state = enrolment.authorize(keys_file, line, offer, None, home)
            log(f"rdslink: startup requests from {offer.host} {state} in {keys_file}")
        click.echo(f"{offer.host}: {state} in {keys_file}")
        return 0
    if revoke is not None:
        assert keys_file is not None
        lines = enrolment.revoke(keys_file, revoke, home)
        routes = trust.forget_routes(db, revoke)
        if not lines and not routes:
            raise InputError(f"{revoke}: no line of {keys_file} and no route here belongs to it")
        log(f"rdslink: revoked {revoke}: {lines} line(s) of {keys_file}, {routes} route(s)")
        click.echo(f"{revoke}: revoked ({lines} line(s) removed from {keys_file}, {routes} route(s) forgotten)")
        return 0
    if enrol:
        host, key = enrol
        try:
            replaced = trust.enroll(db, host, key)
        except ProtocolError as e:
            raise InputError(str(e)) from None
        log(f"rdslink: enrolled {host}'s host key {fingerprint(key)}"
            + (f" in place of {fingerprint(replaced)}" if replaced else ""))
        click.echo(f"{host}: enrolled {fingerprint(key)}")
        return 0
    if accept is not None:
        try:
            old, new = trust.accept(db, accept)
        except ProtocolError as e:
            raise InputError(str(e)) from None
        log(f"rdslink: accepted {accept}'s new host key {fingerprint(new)}"
            + (f" in place of {fingerprint(old)}" if old else ""))
        click.echo(f"{accept}: accepted {fingerprint(new)}" + (f" (was {fingerprint(old)})" if old else ""))
        return 0
    return listing(home, db, keys_file, as_json)


def listing(home: Home, db: Database, keys_file: Path | None, as_json: bool) -> int:
    from rds import enrolment, jobs, trust
    from rds.clock import now_text
    from rds.identity import fingerprint

    ssh = enrolment.lowers(keys_file, home)
    seen = jobs.checked_in(db)
    pins = trust.keys(db)
    changed = trust.changes(db)
    routed: dict[str, list[str]] = {}
    for r in jobs.routes(db):
        if r["host"] != r["via"]:
            routed.setdefault(r["via"], []).append(r["host"])
    rows: list[dict[str, Any]] = []
    for name in sorted(set(ssh) | set(seen)):
        key = pins.get(name)
        rows.append({"name": name, "ssh_keys": ssh.get(name, []),
                     "host_key": fingerprint(key[0]) if key else None, "enrolled": bool(key and key[1]),
                     "offered_key": fingerprint(changed[name][1]) if name in changed else None,
                     "last_checkin": now_text(seen[name]) if name in seen else None,
                     "hosts": routed.get(name, [])})
    if as_json:
        print_json(rows)
    elif rows:
        click.echo(table([[r["name"], ",".join(r["ssh_keys"]) or "-",
                           (r["host_key"] or "-") + (" (enrolled)" if r["enrolled"] else "")
                           + (f"; CHANGED to {r['offered_key']}" if r["offered_key"] else ""),
                           r["last_checkin"] or "never", len(r["hosts"])] for r in rows],
                         ["LOWER", "SSH KEY", "HOST KEY", "LAST CHECK-IN", "HOSTS BELOW"]))
    else:
        click.echo("no lower systems")
    return 0


main = entry(command)
