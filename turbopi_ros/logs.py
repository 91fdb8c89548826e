"""The package's Python loggers, propagating as the logging module intends.

Importing ROS 2's ``launch`` (a launch file run in-process, launch_testing's pytest plugin under ``colcon test``)
makes every logger created afterwards a LaunchLogger that does not propagate to its parents. The package's warnings
would then skip the handler the node installs on the ``turbopi_ros`` logger (it forwards them to the ROS log) and
any handler a user or pytest puts on the root, and end up on Python's last-resort stderr printer.
"""
import logging


def get_logger(name: str) -> logging.Logger:
    """logging.getLogger(name), propagating to the root whatever logger class is installed: it and each logger above
    it in its dotted name (the package's loggers, where the node attaches its handler)."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        logging.getLogger(".".join(parts[:i])).propagate = True
    logger = logging.getLogger(name)
    logger.propagate = True
    return logger
