"""Lightning training: the LightningModule, the Trainer and its callbacks, resume."""
