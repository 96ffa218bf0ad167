"""Runtime monitoring of training processes: heartbeats, the stall watchdog, the watched
DataLoader, DDP's collective phase, stack dumps, the node monitor (the ranks seen from outside), and
the stall report (views of the run folder, verdict rules, text)."""
