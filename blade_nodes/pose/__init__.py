"""Stage 2: SMPL-X pose and shape per image.

- ``keypoints2d``: POSE_KEYPOINT (DWPose / OpenPose JSON) -> per-frame pixel tensors.
- ``skeleton``: the SMPL-X joints without the full mesh pass (fast, for fitting).
- ``fit``: Tz-conditioned SMPL-X fit to 2D keypoints (no network weights needed).
- ``posenet``: the BLADE PoseNet port (needs its checkpoint).

Sub-modules are imported on demand (``from blade_nodes.pose.fit import ...``) so that
importing one never pulls in another's dependencies.
"""
