"""Faults: prove that nothing is lost (issue 7).

``runners.py`` holds one function per fault; each runs real processes on
homes under a work directory and returns a ``Row`` (fault, trials, jobs,
lost, doubled, what else failed), the jobs counted outside rds
(``audit.py``).  The tests here run them with few trials; ``bench/faults``
runs them with the full counts and prints the table.
"""
