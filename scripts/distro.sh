# Sourced by setup_venv.sh, test.sh and demo.sh: TURBOPI_ROS_DISTRO picks which ROS 2 wheels from PyPI, and so which
# venv, a run uses. kilted (the default): .venv with requirements-kilted.txt (rclpy 9); jazzy: .venv-jazzy with
# requirements-jazzy.txt (rclpy 7, what a Jetson Thor on JetPack 7 runs). Humble has no PyPI wheels: its Python 3.10
# is checked by compiling the code only (test/test_python310.py).
TURBOPI_ROS_DISTRO=${TURBOPI_ROS_DISTRO:-kilted}
case "$TURBOPI_ROS_DISTRO" in
  kilted) VENV=.venv ;;
  jazzy) VENV=.venv-jazzy ;;
  *) echo "TURBOPI_ROS_DISTRO=$TURBOPI_ROS_DISTRO: expected kilted (the default) or jazzy; Humble has no PyPI" \
          "wheels (its Python 3.10 is compile-checked by test/test_python310.py)" >&2
     exit 2 ;;
esac
export TURBOPI_ROS_DISTRO
ROS_REQUIREMENTS=requirements-$TURBOPI_ROS_DISTRO.txt
