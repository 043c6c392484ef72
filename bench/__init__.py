"""Stalwart's benchmark suite: ``python -m bench`` (or ``bench/run``).

One module per measurement (``overhead``, ``failover``, ``resume``, ``throughput``,
``journal_size``, ``memory``); peers (DBOS on PostgreSQL, Temporal's dev server) live in
``bench.peers`` and run in their own processes; ``report`` turns the results into
``docs/benchmarks.md`` and plots.
"""
