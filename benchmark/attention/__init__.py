"""Attention capture during the UNet pass (streaming, per resolution) and its on-disk cache."""
from benchmark.attention.capture import CAPTURE_VERSION, AttentionCapture, CapturingAttnProcessor

__all__ = ["CAPTURE_VERSION", "AttentionCapture", "CapturingAttnProcessor"]
