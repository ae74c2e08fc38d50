"""The job domain: states, persistence, creation/resume/cancel and step execution."""
