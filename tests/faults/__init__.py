"""The fault suite: 3 workers on the Redis Cluster and the 3-broker Kafka, one fault per run, every
user's state recomputed from the log afterwards (``python -m tests.faults.run``, ``pytest --faults``)."""
