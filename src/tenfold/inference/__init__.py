"""Offline inference: scoring requests through Pub/Sub with a pool of workers, and bulk re-scoring of whole
partitions with Spark (:mod:`tenfold.inference.spark`)."""
