"""Stage 1: pelvis depth Tz (BLADE DepthNet, metric depth, or typed in)."""
