"""The Beat schedule: the only place schedules live."""
