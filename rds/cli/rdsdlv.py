"""rdsdlv: display or delete the entries of the distribution situation file."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from rds.cli import SpreadCommand, entry, fast_table, print_json, with_home
from rds.errors import InputError, UsageError

if TYPE_CHECKING:
    from rds import delivery
    from rds.home import Home

NAME = "rdsdlv"
SHORT = ["DESTINATION", "TYPE", "CABINET", "PACKAGE", "VERSION", "GEN", "JOB", "STATUS"]
# what the short table shows, as text already: 100,000 rows print in well under a second
SHORT_COLUMNS = ("dest", "packager", "cabinet", "package", "version", "generation", "job_no", "status")
LONG = [*SHORT[:7], "JOB TYPE", "STATUS", "CODE", "UPDATED", "MESSAGE"]


class Command(SpreadCommand):
    spread_options = ("-a", "-e", "-r", "-n")


@click.command(name=NAME, cls=Command, context_settings={"help_option_names": ["--help"]})
@click.option("-c", "short", is_flag=True, help="Short display, one line an entry (the default).")
@click.option("-l", "long", is_flag=True, help="Long display: also job type, code, time of the change, message.")
@click.option("-d", "delete", is_flag=True, help="Delete the selected entries (needs a filter or --all).")
@click.option("--all", "everything", is_flag=True, help="With -d: delete every entry.")
@click.option("-a", "dests", multiple=True, metavar="DESTINATION...", help="Only these destinations.")
@click.option("-e", "statuses", multiple=True, metavar="STATUS...", help="Only these statuses (names or codes).")
@click.option("-r", "packages", multiple=True, metavar="FULL_PACKAGE_ID...",
              help="Only these packages: TYPE.CABINET.PACKAGE[.VERSION[.GENERATION]].")
@click.option("-n", "job_nos", multiple=True, metavar="JOB...", help="Only these job numbers.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
def command(short: bool, long: bool, delete: bool, everything: bool, dests: tuple[str, ...],
            statuses: tuple[str, ...], packages: tuple[str, ...], job_nos: tuple[str, ...], as_json: bool) -> int:
    """Display the distribution status of each package for each destination, or delete entries with -d.

    Several values may follow -a, -e, -r and -n, space-separated; the filters
    combine with AND, the values of one filter with OR.  The distribution
    status server facility (rdsdlvse) must be running.
    """
    from rds import delivery

    if short + long + delete > 1:
        raise UsageError("give one of -c, -l and -d")
    if everything and not delete:
        raise UsageError("--all goes with -d")
    if delete and as_json:
        raise UsageError("--json goes with the display, not with -d")
    try:
        jobs = [int(n) for n in job_nos]
    except ValueError:
        raise InputError(f"bad job number in {' '.join(job_nos)}") from None
    flt = delivery.Filter(dests=list(dict.fromkeys(dests)), statuses=[delivery.parse_status(s) for s in statuses],
                        packages=[delivery.PackageFilter.parse(p) for p in packages], jobs=jobs)
    if delete and flt.empty and not everything:
        raise UsageError("-d deletes the entries a filter selects: give -a, -e, -r or -n, or --all for all")
    return show_or_delete(flt, delete, long or as_json, as_json)


@with_home(superuser=True)
def show_or_delete(flt: delivery.Filter, delete: bool, long: bool, as_json: bool, *, home: Home) -> int:
    from rds import delivery
    from rds.clock import local_text

    delivery.require_running(home)
    f = delivery.open_file(home)
    try:
        if delete:
            n = f.delete(flt)
            click.echo(f"deleted {n} entr{'y' if n == 1 else 'ies'}")
            return 0
        f.trim()  # recorders trim every few hundred changes; show no more than OrderOfDeliveryStatus
        if not long:
            lines = short_table(f, flt)
            click.echo("\n".join(lines) if lines else "no entries" if flt.empty else "no entry matches")
            return 0
        rows = f.select(flt)
    finally:
        f.close()
    if as_json:
        print_json([vocabulary(dict(zip(delivery.COLUMNS, r, strict=True)), local_text) for r in rows])
    elif not rows:
        click.echo("no entries" if flt.empty else "no entry matches")
    else:
        click.echo(fast_table([(r[0], r[1], r[2], r[3], r[4], r[5], str(r[6]), r[7], r[8], r[9], local_text(r[10]),
                                " ".join(r[11].split())) for r in rows], LONG))
    return 0


def vocabulary(entry: dict[str, Any], local_text: Callable[[float], str]) -> dict[str, Any]:
    """An entry in rds(7)'s JSON words: ``package`` the full package ID (its ID part ``package_id``),
    ``type`` the job type, ``updated`` an ISO 8601 time with its offset (``local_text``: rds.clock's)."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if key == "package":
            out["package"] = ".".join(str(entry[k]) for k in ("packager", "cabinet", "package", "version",
                                                              "generation"))
            out["package_id"] = value
        elif key == "job_type":
            out["type"] = value
        elif key == "updated":
            out["updated"] = local_text(value)
        else:
            out[key] = value
    return out


def short_table(f: delivery.File, flt: delivery.Filter) -> list[str]:
    """The lines of the short table, as ``table`` would print them; SQLite pads the cells.

    Formatting 100,000 rows in Python costs more than the whole second a
    display may take on a busy host; SQLite's printf does it as it reads.
    """
    from rds import text

    found = f.select(flt, ["max(length(dest))", "max(length(package))", "max(job_no)"])[0]
    if found[0] is None:
        return []
    longest = {"dest": found[0], "package": found[1], "job_no": len(str(found[2]))}
    # tabulate pads headers by 2; no packager, cabinet, version or generation is longer than its header
    widths = [max(len(h) + 2, longest.get(c, 0)) for h, c in zip(SHORT, SHORT_COLUMNS, strict=True)]
    fmt = "  ".join([*(f"%-{w}s" for w in widths[:-1]), "%s"])  # the last column (STATUS) is never empty
    rows = f.select(flt, [f"printf('{fmt}', {', '.join(SHORT_COLUMNS)})"])
    return [(fmt % tuple(SHORT)).rstrip(), *(text.shown(r[0]) for r in rows)]


main = entry(command)
