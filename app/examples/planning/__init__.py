"""The planning example: a four-step project plan whose progress is weighted."""
