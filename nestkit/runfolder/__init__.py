"""The run folder: its layout and every file format in it, read and written here only.

Batch log, quarantine, heartbeats, worker status slots, incidents. Writers append whole lines or
nothing and never raise into the watchdog; readers tolerate (and report) a torn last line. Light:
no torch, lhotse or Lightning.
"""
