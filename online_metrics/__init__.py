"""The online-metrics service: what came of the lists the gateway served.

It joins the exposure log (``impressions``, one record per served list) with the behaviour events
(clicks, carts, purchases naming their list) and reports per (surface, model_version, arm) the
rates that an A/B rollout is judged by: a JSON API, an A/B comparison, Prometheus metrics and a
page of plots. ``python -m online_metrics``; docs/online_metrics.md.
"""
