"""Temporal restore: fuse each restored frame with the one before along optical flow, and measure flicker."""
