"""rdsstage: export packages to a medium (-o), or stage them from one into this host's storehouse (-i)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

from rds.cli import entry, multi, print_json, table, with_home
from rds.errors import InputError, IntegrityError, UsageError

if TYPE_CHECKING:
    from rds import staging
    from rds.database import Database
    from rds.home import Home
    from rds.packages import PackageId


@click.command(name="rdsstage", context_settings={"help_option_names": ["--help"]})
@click.option("-o", "export_to", type=click.Path(path_type=Path), metavar="PATH",
              help="Export packages to the directory PATH, or to a tar archive if PATH ends in .tar, .tar.gz or .tgz.")
@click.option("-i", "stage_from", type=click.Path(path_type=Path), metavar="PATH",
              help="Stage the packages of the directory or archive PATH into this host's package storehouse.")
@click.option("-r", "packages", multiple=True, metavar="FULL_PACKAGE_ID",
              help="Only this package; more may follow, space-separated (default: all).")
@click.option("--have", "have_file", type=click.Path(path_type=Path, dir_okay=False), metavar="LIST",
              help="With -o: the target holds the chunks LIST names (its 'rdsstage --chunks'); carry only the others.")
@click.option("--since", "since", metavar="FULL_PACKAGE_ID",
              help="With -o: the target holds this package (an earlier version); carry only the chunks it lacks.")
@click.option("--chunks", "list_chunks", is_flag=True, help="Print the names of the chunks held here, one a line.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@click.argument("more_packages", nargs=-1, metavar="[FULL_PACKAGE_ID...]")
def command(export_to: Path | None, stage_from: Path | None, packages: tuple[str, ...], have_file: Path | None,
            since: str | None, list_chunks: bool, as_json: bool, more_packages: tuple[str, ...]) -> int:
    """Carry packages by hand: seed 002's manual update (the CD).

    \b
      rdsstage -o PATH [-r FULL_PACKAGE_ID...]   on the managing server
      rdsstage -o PATH --have LIST | --since FULL_PACKAGE_ID [-r ...]
                                                 only the chunks the target lacks
      rdsstage -i PATH [-r FULL_PACKAGE_ID...]   on a relay or client
      rdsstage --chunks > LIST                   on the target: what it holds

    Every package is verified (manifest, size, SHA-256, the archive's members)
    and appears whole or not at all.  Staging works whatever the CachingPolicy.

    \b
    Exit status: 0 done; 1 usage; 2 settings; 3 bad medium or unknown package;
    5 lock timeout; 6 some packages rejected (the others were staged).
    """
    from rds.packages import PackageId

    if list_chunks:
        if export_to is not None or stage_from is not None:
            raise UsageError("--chunks goes alone")
        return chunk_names()
    if (export_to is None) == (stage_from is None):
        raise UsageError("give exactly one of -o PATH and -i PATH")
    if (have_file is not None or since is not None) and export_to is None:
        raise UsageError("--have and --since go with -o PATH")
    if have_file is not None and since is not None:
        raise UsageError("give one of --have LIST and --since FULL_PACKAGE_ID")
    if have_file is not None or since is not None:
        return carry_missing(export_to, [PackageId.parse(p) for p in multi(packages, more_packages)], have_file,
                             None if since is None else PackageId.parse(since), as_json)
    if more_packages and not packages:
        raise UsageError(f"unexpected argument {more_packages[0]!r} (packages go after -r)")
    return carry(export_to, stage_from, [PackageId.parse(p) for p in multi(packages, more_packages)], as_json)


@with_home(database=True)
def carry(export_to: Path | None, stage_from: Path | None, only: list[PackageId], as_json: bool, *,
          home: Home, db: Database) -> int:
    from rds import staging, trust
    from rds.storehouse import Storehouse

    if export_to is not None:
        sign = (lambda m: trust.sign_manifest(home.identity, m)) if home.settings.is_managing_server else None
        outcomes = staging.export(Storehouse.of(home), export_to, only, sign=sign)
    else:
        assert stage_from is not None
        me = home.identity if home.settings.is_managing_server else None
        outcomes = staging.stage(home, stage_from, only, key=trust.signer_key(home.settings, db, me))
    return show(outcomes, as_json)


def show(outcomes: list[staging.Outcome], as_json: bool) -> int:
    if as_json:
        print_json([o.to_json() for o in outcomes])
    else:
        click.echo(table([[o.package, o.action, o.size, o.message] for o in outcomes],
                         ["PACKAGE", "ACTION", "SIZE", "WHERE / WHY"]))
    rejected = [o for o in outcomes if o.action == "rejected"]
    if rejected:
        raise IntegrityError(f"{len(rejected)} of {len(outcomes)} package(s) rejected: {rejected[0].message}")
    return 0


@with_home()
def chunk_names(*, home: Home) -> int:
    from rds.storehouse import Storehouse

    for name in sorted(Storehouse.of(home).chunks.every()):
        if len(name) == 64:
            click.echo(name)
    return 0


@with_home(database=True)
def carry_missing(export_to: Path | None, only: list[PackageId], have_file: Path | None, since: PackageId | None,
                  as_json: bool, *, home: Home, db: Database) -> int:
    from rds import staging, trust
    from rds.storehouse import Storehouse

    assert export_to is not None
    store = Storehouse.of(home)
    if since is not None:
        older = store.get(since)
        if older is None:
            raise InputError(f"unknown package {since} (not in {store.root})")
        have = {c[0] for c in older.chunks}
    else:
        assert have_file is not None
        try:
            words = have_file.read_text().split()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{have_file}: cannot read ({e})") from None
        have = {w for w in words if re.fullmatch(r"[0-9a-f]{64}", w)}
        if len(have) != len(words):
            raise InputError(f"{have_file}: not a list of chunk names (SHA-256 in hex, one a line)")
    sign = (lambda m: trust.sign_manifest(home.identity, m)) if home.settings.is_managing_server else None
    return show(staging.export(store, export_to, only, sign=sign, have=have), as_json)


main = entry(command)
