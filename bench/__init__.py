"""Benchmarks of the read path against the local stand-ins: `python -m bench` (make bench) prints one table.

Not part of the test run and never deployed (vercel.json excludes `bench/`). See bench/README.md.
"""
