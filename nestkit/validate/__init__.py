"""`validate-manifest`: every line, path, header and decoded sample of NeMo or lhotse manifests.

Light: numpy, soundfile and orjson only (no torch, lhotse or Lightning), so that it installs and
starts fast as a CI gate.
"""
