"""Locust load tests of the exchange: ``python -m loadtest run | sweep | worker | clientcost``.

See ``loadtest/README.md``. Nothing here imports Locust except ``loadtest.locustfile``,
which only Locust's own processes load (Locust monkey-patches the standard library).
"""
