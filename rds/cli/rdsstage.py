"""rdsstage: export packages to a medium (-o), or stage them from one into this host's storehouse (-i)."""

from __future__ import annotations

from pathlib import Path

import click

from rds import staging, trust
from rds.cli import entry, multi, print_json, table, with_home
from rds.database import Database
from rds.errors import IntegrityError, UsageError
from rds.home import Home
from rds.packages import PackageId
from rds.storehouse import Storehouse


@click.command(name="rdsstage", context_settings={"help_option_names": ["--help"]})
@click.option("-o", "export_to", type=click.Path(path_type=Path), metavar="PATH",
              help="Export packages to the directory PATH, or to a tar archive if PATH ends in .tar, .tar.gz or .tgz.")
@click.option("-i", "stage_from", type=click.Path(path_type=Path), metavar="PATH",
              help="Stage the packages of the directory or archive PATH into this host's package storehouse.")
@click.option("-r", "packages", multiple=True, metavar="FULL_PACKAGE_ID",
              help="Only this package; more may follow, space-separated (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@click.argument("more_packages", nargs=-1, metavar="[FULL_PACKAGE_ID...]")
def command(export_to: Path | None, stage_from: Path | None, packages: tuple[str, ...], as_json: bool,
            more_packages: tuple[str, ...]) -> int:
    """Carry packages by hand: seed 002's manual update (the CD).

    \b
      rdsstage -o PATH [-r FULL_PACKAGE_ID...]   on the managing server
      rdsstage -i PATH [-r FULL_PACKAGE_ID...]   on a relay or client

    Every package is verified (manifest, size, SHA-256, the archive's members)
    and appears whole or not at all.  Staging works whatever the CachingPolicy.

    \b
    Exit status: 0 done; 1 usage; 2 settings; 3 bad medium or unknown package;
    5 lock timeout; 6 some packages rejected (the others were staged).
    """
    if (export_to is None) == (stage_from is None):
        raise UsageError("give exactly one of -o PATH and -i PATH")
    if more_packages and not packages:
        raise UsageError(f"unexpected argument {more_packages[0]!r} (packages go after -r)")
    return carry(export_to, stage_from, [PackageId.parse(p) for p in multi(packages, more_packages)], as_json)


@with_home(database=True)
def carry(export_to: Path | None, stage_from: Path | None, only: list[PackageId], as_json: bool, *,
          home: Home, db: Database) -> int:
    if export_to is not None:
        sign = (lambda m: trust.sign_manifest(home.identity, m)) if home.settings.is_managing_server else None
        outcomes = staging.export(Storehouse.of(home), export_to, only, sign=sign)
    else:
        assert stage_from is not None
        me = home.identity if home.settings.is_managing_server else None
        outcomes = staging.stage(home, stage_from, only, key=trust.signer_key(home.settings, db, me))
    if as_json:
        print_json([o.to_json() for o in outcomes])
    else:
        click.echo(table([[o.package, o.action, o.size, o.message] for o in outcomes],
                         ["PACKAGE", "ACTION", "SIZE", "WHERE / WHY"]))
    rejected = [o for o in outcomes if o.action == "rejected"]
    if rejected:
        raise IntegrityError(f"{len(rejected)} of {len(outcomes)} package(s) rejected: {rejected[0].message}")
    return 0


main = entry(command)
