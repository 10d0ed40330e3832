"""QoS profiles of the hgm node (DESIGN §3)."""

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

SENSOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE
)
"""Camera inputs: best effort, depth 1 — the latest frame wins and no backlog ever builds up.
Matches both reliable and best-effort camera drivers."""

LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
"""Avatar outputs: reliable, the last one kept for late subscribers (an AR client joining later
still gets the current avatar). Subscribers must ask for TRANSIENT_LOCAL to receive it."""

DIAGNOSTICS_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE
)
"""/diagnostics as diagnostic_aggregator and rqt_robot_monitor expect it (the rclpy default)."""
