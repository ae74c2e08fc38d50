"""The chaos suite: the gateway on servers of its own, attacked one scenario at a time
while jobs run, with one table of what each attack cost.

- servers.py: a private PostgreSQL cluster (and Redis server) that a scenario may restart;
- stack.py: the gateway's processes on them (simulators, API, workers, Beat);
- ledger.py: what a scenario is judged by (jobs lost, steps committed twice, calls in
  flight against the limit, recovery times, events a subscriber missed);
- processes.py, outages.py, clients.py: the scenarios, by family;
- sizes.py: the full run's sizes and the test suite's (`SHORT`);
- runner.py: runs them and writes the table (`python -m benchmarks.chaos`).
"""
