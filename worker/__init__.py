"""The Celery side of the gateway: app, queues, tasks and the Beat schedule."""
