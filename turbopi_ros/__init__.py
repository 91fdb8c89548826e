"""turbopi_ros: pi0 / pi0.5 vision-language-action policies as a ROS 2 node."""

__version__ = "0.1.0"
