"""CAO Gateway: orchestration of multi-step AI workflows over Celery, Redis and SQL."""
