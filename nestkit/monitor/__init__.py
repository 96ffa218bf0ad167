"""Runtime monitoring inside training processes: heartbeats, the stall watchdog, the watched
DataLoader, DDP's collective phase, stack dumps, and the stall report's verdict."""
