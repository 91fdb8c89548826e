"""The package's Python logging (the policy's warnings: random weights, no norm stats) forwarded to a node's ROS
logger, so it reaches the console and /rosout like the node's own messages."""
from __future__ import annotations

import logging

from ..logs import get_logger


class RosLogHandler(logging.Handler):
    def __init__(self, ros_logger):
        super().__init__(logging.INFO)
        self.ros_logger = ros_logger
        self.previous_level = logging.NOTSET  # the package logger's level before forwarding

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                self.ros_logger.error(message)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(message)
            else:
                self.ros_logger.info(message)
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def forward_python_logging(ros_logger) -> RosLogHandler:
    """Attach a RosLogHandler to the package's Python logger (INFO and up); remove it with stop_forwarding. With a
    handler in the hierarchy, Python's last-resort stderr output stays silent, so each message appears once."""
    handler = RosLogHandler(ros_logger)
    package = get_logger("turbopi_ros")
    handler.previous_level = package.level
    package.addHandler(handler)
    package.setLevel(logging.INFO)
    return handler


def stop_forwarding(handler: RosLogHandler) -> None:
    package = get_logger("turbopi_ros")
    package.removeHandler(handler)
    package.setLevel(handler.previous_level)
