"""The Lightning layer: LightningModules and callbacks around the plain models."""
