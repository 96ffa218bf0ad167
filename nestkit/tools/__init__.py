"""Offline debugging tools on the training code path: lookup, replay, positions of steps."""
