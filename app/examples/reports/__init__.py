"""The reports example: slow report generation, metrics sync and retention, on two queues."""
