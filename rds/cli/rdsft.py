"""rdsft: check the upper system for jobs (-a), package (-c), empty the storehouse (-init)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from rds.cli import entry, with_home
from rds.errors import InputError, LockTimeout, UsageError

if TYPE_CHECKING:  # the library is imported where a mode uses it (--help and mistakes need none of it)
    from rds.database import Database
    from rds.home import Home


@click.command(name="rdsft", context_settings={"help_option_names": ["--help"]})
@click.option("-a", "mode_a", is_flag=True, help="Check the upper system for the jobs of this host and every host "
              "below it; fetch, install, store and forward; send results.")
@click.option("-c", "mode_c", is_flag=True, help="Make a package from SOURCE_DIR and register it on this host.")
@click.option("-init", "mode_init", is_flag=True, help="Delete every package from the temporary package storehouse.")
@click.option("-g", "cabinet", metavar="CABINET", help="With -c: cabinet ID (1-2 letters or digits).")
@click.option("-r", "package", metavar="PACKAGE_ID", help="With -c: package ID (1-44 letters, digits, _ or -).")
@click.option("-v", "version", metavar="VERSION", help="With -c: version/revision (1-6 letters or digits).")
@click.option("-G", "generation", metavar="GENERATION", default="0", show_default=True,
              help="With -c: generation number (0-9999).")
@click.option("-i", "install_dir", metavar="INSTALL_DIR", help="With -c: absolute install directory on the hosts.")
@click.option("--script", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="With -c: a script run in the install directory after extraction; its exit status "
                   "decides COMPLETE or ERROR.")
@click.option("--expire-days", type=click.IntRange(0, 36500), metavar="N",
              help="With -c: storage period in a relay's storehouse, days (default: LifeofResource).")
@click.argument("source", required=False, type=click.Path(path_type=Path), metavar="[SOURCE_DIR]")
def command(mode_a: bool, mode_c: bool, mode_init: bool, cabinet: str | None, package: str | None,
            version: str | None, generation: str, install_dir: str | None, script: Path | None,
            expire_days: int | None, source: Path | None) -> int:
    """Check for jobs, make packages, or empty the package storehouse.

    \b
      rdsft -a
      rdsft -c -g CABINET -r PACKAGE_ID -v VERSION [-G GEN] -i INSTALL_DIR
            [--script FILE] [--expire-days N] SOURCE_DIR
      rdsft -init
    """
    if mode_a + mode_c + mode_init != 1:
        raise UsageError("give exactly one of -a, -c and -init")
    if mode_c:
        return register(cabinet, package, version, generation, install_dir, script, expire_days, source)
    if source is not None or any(v is not None for v in (cabinet, package, version, install_dir, script)):
        raise UsageError("-g, -r, -v, -G, -i, --script and SOURCE_DIR go with -c only")
    return empty_storehouse() if mode_init else check_in()


@with_home()
def register(cabinet: str | None, package: str | None, version: str | None, generation: str,
             install_dir: str | None, script: Path | None, expire_days: int | None, source: Path | None, *,
             home: Home) -> int:
    missing = [f for f, v in (("-g", cabinet), ("-r", package), ("-v", version), ("-i", install_dir),
                              ("SOURCE_DIR", source)) if v is None]
    if missing:
        raise UsageError(f"-c needs {', '.join(missing)}")
    assert cabinet and package and version and install_dir and source
    from rds import trust
    from rds.packages import PackageId
    from rds.storehouse import Storehouse

    pid = PackageId.make(cabinet, package, version, generation)
    text = None
    if script is not None:
        try:
            text = script.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{script}: cannot read the script ({getattr(e, 'strerror', None) or e})") from None
    m = Storehouse.of(home).register(pid, source, install_dir, script=text, expire_days=expire_days,
                                     sign=lambda m: trust.sign_manifest(home.identity, m),
                                     chunked=home.settings.package_format == "CHUNKS")
    click.echo(str(m.id))
    return 0


@with_home(pass_lock=True, database=True)  # not while a pass downloads into the storehouse
def empty_storehouse(*, home: Home, db: Database) -> int:
    from rds import cleanup
    from rds.home import lock_timeout

    if home.settings.is_managing_server:
        raise UsageError("this is the managing server: -init would delete the registered packages")
    report = cleanup.remove_all(home, db, wait=lock_timeout())
    click.echo(f"deleted {len(report.removed)} package(s) from {home.packages}"
               + (f"; {report.invalidated} job(s) invalidated" if report.invalidated else ""))
    if report.busy:
        raise LockTimeout(f"kept {', '.join(r.package for r in report.busy)}: being read by a lower system")
    return 0


@with_home()  # the pass takes the pass lock and opens the database itself, as rdsma's do
def check_in(*, home: Home) -> int:
    from rds import checkin

    return checkin.check_in(home, click.echo)  # the same as rdsft -a without click (rds.checkin.main)


main = entry(command)
