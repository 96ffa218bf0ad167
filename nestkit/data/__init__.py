"""Manifests, batch plans, audio loading, noise, augmentation and the NEST dataset."""
