"""Feature code shared by training (export/) and serving (gateway/, feature_service/).

Everything that turns raw events or item attributes into model inputs lives here, so that the
offline and online paths cannot disagree: a change to a feature is one change.
"""
