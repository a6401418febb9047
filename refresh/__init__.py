"""Continuous training (issue 17): a refresh job that follows the events stream.

One cycle (``refresh.job``): read the events topic from where the last refresh stopped
(``refresh.source``), merge the new events with the data the live version was built from inside a
time window (``refresh.data``), warm-start a candidate from the live checkpoint on the extended
catalog (``refresh.warm_start``), compare it with the live version on the newest events neither has
trained on (``refresh.evaluate``), and publish and promote it through the rollout when it is better
by the margin. Every run is recorded (``refresh.history``). ``python -m refresh``; docs/refresh.md.
"""
