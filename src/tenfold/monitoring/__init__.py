"""Monitoring: alerts (``tenfold.monitoring.alerts``) and, later, drift metrics."""
