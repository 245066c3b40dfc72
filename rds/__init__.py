"""rds: distribute software packages from a managing server through relays to hosts."""

__version__ = "0.1.0"
