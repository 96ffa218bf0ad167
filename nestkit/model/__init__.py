"""The NEST model: NeMo-compatible module names, state_dict keys and numerics."""
