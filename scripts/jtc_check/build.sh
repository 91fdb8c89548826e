#!/usr/bin/env bash
# Builds harness.cpp against ros2_controllers' joint_trajectory_controller::Trajectory (scripts/jtc_check/README.md).
#   bash scripts/jtc_check/build.sh SOURCES [VENV]
# SOURCES holds checkouts of ros2_controllers, ros2_control, rclcpp and angles (the branch of the ROS distro to
# check, e.g. kilted); VENV (default .venv) has the ROS wheels' headers and librcutils. Writes
# scripts/jtc_check/build/harness (AddressSanitizer, UBSan, libstdc++ assertions) and build/harness_release (-O2).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "${1:?usage: build.sh SOURCES [VENV]}" && pwd)
venv=$(cd "${2:-$here/../../.venv}" && pwd)
for d in ros2_controllers ros2_control rclcpp angles; do
  [ -d "$src/$d" ] || { echo "build.sh: $src/$d is missing (a checkout of $d)" >&2; exit 2; }
done
[ -f "$venv/lib/librcutils.so" ] || { echo "build.sh: $venv/lib/librcutils.so is missing (a venv with the ROS wheels)" >&2; exit 2; }
includes=(-I"$here/rclcpp_shim" -I"$src/rclcpp/rclcpp/include" -I"$src/ros2_controllers/joint_trajectory_controller/include"
          -I"$src/angles/angles/include" -I"$src/ros2_control/hardware_interface/include")
for d in "$venv"/include/*/; do includes+=(-I"$d"); done
sources=("$src/rclcpp/rclcpp/src/rclcpp/time.cpp" "$src/rclcpp/rclcpp/src/rclcpp/duration.cpp"
         "$src/rclcpp/rclcpp/src/rclcpp/exceptions/exceptions.cpp"
         "$src/ros2_controllers/joint_trajectory_controller/src/trajectory.cpp" "$here/harness.cpp")
mkdir -p "$here/build"
checked=(-std=c++17 -g -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -D_GLIBCXX_ASSERTIONS)
g++ "${checked[@]}" "${includes[@]}" "${sources[@]}" -L"$venv/lib" -lrcutils -Wl,-rpath,"$venv/lib" \
  -o "$here/build/harness"
g++ -std=c++17 -O2 -DNDEBUG "${includes[@]}" "${sources[@]}" -L"$venv/lib" -lrcutils -Wl,-rpath,"$venv/lib" \
  -o "$here/build/harness_release"
echo "built $here/build/harness and $here/build/harness_release"
