"""Feature definitions and pure Spark transforms for the reference workload."""
