"""Replay, lookup, heartbeats, the stall watchdog and stall reports."""
