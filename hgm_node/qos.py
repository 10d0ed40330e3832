"""QoS profiles of the hgm node (docs/architecture.md §3), and its camera-input subscriptions."""

from collections.abc import Callable

from rclpy.event_handler import QoSRequestedIncompatibleQoSInfo, QoSSubscriptionMatchedInfo, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSPolicyKind, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription

SENSOR_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE
)
"""Camera inputs, best effort, depth 1: the latest frame wins and no backlog ever builds up. Matches
both reliable and best-effort camera drivers; what an input starts with (InputSubscription)."""

INPUT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE
)
"""Camera inputs whose publishers are all reliable (ROS 2's default QoS): still depth 1, and lost
fragments of a large frame are repaired. A best-effort reader loses a whole frame to one lost
fragment: from a camera with Fast DDS's default 512 KiB shared-memory segment, nearly every 640x480
RGB frame (bench/pointcloud2.py, README)."""

LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
"""Avatar outputs: reliable, the last one kept for late subscribers (an AR client joining later
still gets the current avatar). Subscribers must ask for TRANSIENT_LOCAL to receive it."""

DIAGNOSTICS_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE
)
"""/diagnostics as diagnostic_aggregator and rqt_robot_monitor expect it (the rclpy default)."""


class InputSubscription:
    """A camera input that takes the reliability its publishers offer: SENSOR_QOS, which matches any
    publisher, until every matched publisher is reliable, then INPUT_QOS; back to SENSOR_QOS when a
    best-effort publisher shows up (a reliable reader cannot match it).

    Starting best effort keeps a best-effort camera from ever seeing an incompatible reader (its driver
    would log a warning). ROS 2's BEST_AVAILABLE reliability decides once, from the publishers known
    when the subscription is created, which at a node's start are usually none yet."""

    def __init__(self, node: Node, msg_type: type, topic: str, callback: Callable) -> None:
        self._node, self._args = node, (msg_type, topic, callback)
        self.subscription: Subscription = self._subscribe(SENSOR_QOS)

    @property
    def topic_name(self) -> str:
        return self.subscription.topic_name

    def _subscribe(self, qos: QoSProfile) -> Subscription:
        events = SubscriptionEventCallbacks(matched=self._on_matched, incompatible_qos=self._on_incompatible_qos)
        return self._node.create_subscription(*self._args, qos, event_callbacks=events)

    def _resubscribe(self, qos: QoSProfile) -> None:
        self._node.get_logger().info(f"{self.topic_name}: subscribing {qos.reliability.name.lower().replace('_', ' ')}")
        old, self.subscription = self.subscription, self._subscribe(qos)
        self._node.destroy_subscription(old)

    def _on_matched(self, info: QoSSubscriptionMatchedInfo) -> None:
        publishers = self._node.get_publishers_info_by_topic(self.topic_name)
        if (self.subscription.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT and publishers
                and all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers)):
            self._resubscribe(INPUT_QOS)

    def _on_incompatible_qos(self, info: QoSRequestedIncompatibleQoSInfo) -> None:
        if info.last_policy_kind == QoSPolicyKind.RELIABILITY:
            self._resubscribe(SENSOR_QOS)
