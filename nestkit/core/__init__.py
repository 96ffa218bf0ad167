"""The bottom layer: errors, seeded randomness, time-bounded calls, fault-injection hooks.

Imports nothing else from nestkit and nothing heavy (no torch, lhotse or Lightning).
"""
