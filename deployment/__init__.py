"""Deployment of a trained model: the device encoder and cloud decoder (``python -m deployment.export``), and
the bytes a sample takes on the wire."""

from .payload import payload_table

__all__ = ["payload_table"]
