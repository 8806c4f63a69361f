"""Routes: names clients use as ``model_name`` that map to weighted (model, version)
targets; sticky A/B by consistent hashing, shadow traffic, canary rollouts with
automatic rollback, blue-green switches. See manager.py for the control side and
table.py for the hot path."""
