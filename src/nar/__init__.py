"""nar — Neighboring Autoregressive Modeling (next-neighbour prediction) for images and video."""

__version__ = "0.1.0"
