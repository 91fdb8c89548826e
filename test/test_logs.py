"""The package's loggers propagate even where ROS 2's launch made non-propagating loggers the default (it does so on
import: launch files run in-process, launch_testing's pytest plugin under colcon test), so their warnings reach the
node's ROS log forwarding and pytest's caplog."""
import logging

from turbopi_ros.logs import get_logger


class NonPropagating(logging.Logger):  # what launch.logging.LaunchLogger does
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.propagate = False


def test_a_logger_and_its_parents_propagate_under_a_non_propagating_logger_class(caplog):
    default = logging.getLoggerClass()
    logging.setLoggerClass(NonPropagating)
    try:
        plain = logging.getLogger("turbopi_logs_test.plain")
        logging.getLogger("turbopi_logs_test.package")  # a parent made before, as a non-propagating one
        ours = get_logger("turbopi_logs_test.package.module")
    finally:
        logging.setLoggerClass(default)
    with caplog.at_level(logging.WARNING):
        plain.warning("lost")
        ours.warning("reaches the root")
    assert "reaches the root" in caplog.text and "lost" not in caplog.text


def test_the_package_modules_log_through_it():
    from turbopi_ros.ros import inputs
    from turbopi_ros.policy import policy, tokenizer

    for module in (inputs, policy, tokenizer):
        assert module.logger.propagate and module.logger.name == module.__name__
