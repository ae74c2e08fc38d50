"""Job events: the durable log (the truth) and pub/sub wake-ups for live streams."""
