"""Executors run scoring tasks; they know nothing about agents beyond `score_shard(task)`."""
