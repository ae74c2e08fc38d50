"""Beat tasks: find work and fan it out (stuck jobs, expired leases, retention)."""
