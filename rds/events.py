"""What happens to jobs, as the modules that make it happen announce it.

The module that changes a job's state announces the change once, with
``db.announce(event)`` on the database it changed (rds.database), and the
listeners hear it after the commit that made it true.  The distribution
status (rds.delivery) is such a listener: it records what it hears, and no
other module calls it.  Events carry the jobs and results as their owners
(rds.jobs, rds.results) made them; this module only names them, so it
imports neither.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from rds.packages import PackageId


class AJob(Protocol):
    """A job as events carry it (rds.jobs.Job)."""

    @property
    def job_no(self) -> int: ...
    @property
    def dest(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def package(self) -> PackageId: ...


class AResult(Protocol):
    """A result as events carry it (rds.results.Result)."""

    @property
    def job_no(self) -> int: ...
    @property
    def dest(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def message(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Received:
    """Jobs came from the upper system and are kept in the job storehouse (new or known already)."""

    jobs: Sequence[AJob]


@dataclasses.dataclass(frozen=True)
class Kept:
    """A pass brought what it could: ``ready`` jobs have their package here (or coming when a
    lower system asks for it), ``missing`` ones could not get it."""

    ready: Sequence[AJob]
    missing: Sequence[AJob]


@dataclasses.dataclass(frozen=True)
class Started:
    """The startup request to ``lower`` for these jobs (whose package is here or comes on demand):
    ``reached`` True or False, None when none was sent."""

    lower: str
    jobs: Sequence[AJob]
    reached: bool | None


@dataclasses.dataclass(frozen=True)
class Handed:
    """``lower`` acknowledged these jobs: it holds them now."""

    lower: str
    jobs: Sequence[AJob]


@dataclasses.dataclass(frozen=True)
class Reading:
    """``lower``, the destination of these jobs, began reading their package."""

    lower: str
    jobs: Sequence[AJob]


@dataclasses.dataclass(frozen=True)
class Installing:
    """This host's install of ``job`` began."""

    job: AJob


@dataclasses.dataclass(frozen=True)
class Ended:
    """Results were kept: how jobs ended, or that a lower system could not be started."""

    results: Sequence[AResult]
