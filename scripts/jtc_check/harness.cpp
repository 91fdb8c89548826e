// By-hand check (scripts/jtc_check/README.md): one JointTrajectory, read from stdin, sampled by ros2_controllers'
// own joint_trajectory_controller::Trajectory the way the controller's update() samples a new trajectory: at its
// first update after the trajectory arrives it sets the state before the trajectory and samples, then it samples
// once every update period. Prints one line a sample: seconds since arrival, then positions and velocities, or
// "nosample". Built by build.sh against the controller's source; nothing of it is in this file.
//
// stdin: joints points has_positions has_velocities stamp_ns arrival_ns period_ns
//        joint names
//        state positions, state velocities (the joints' state at arrival)
//        a line a point: time_from_start_ns [positions] [velocities]
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include "joint_trajectory_controller/trajectory.hpp"

using joint_trajectory_controller::Trajectory;
using trajectory_msgs::msg::JointTrajectory;
using trajectory_msgs::msg::JointTrajectoryPoint;

static void read_values(std::vector<double> & values, size_t n)
{
  values.resize(n);
  for (auto & v : values) std::cin >> v;
}

int main()
{
  size_t joints = 0, points = 0;
  int has_positions = 0, has_velocities = 0;
  int64_t stamp_ns = 0, arrival_ns = 0, period_ns = 0;
  std::cin >> joints >> points >> has_positions >> has_velocities >> stamp_ns >> arrival_ns >> period_ns;
  if (!std::cin || joints == 0 || points == 0 || period_ns <= 0) {
    std::fprintf(stderr, "bad input header\n");
    return 2;
  }
  auto msg = std::make_shared<JointTrajectory>();
  msg->header.stamp = rclcpp::Time(stamp_ns, RCL_ROS_TIME);
  for (size_t j = 0; j < joints; ++j) {
    std::string name;
    std::cin >> name;
    msg->joint_names.push_back(name);
  }
  JointTrajectoryPoint state;
  read_values(state.positions, joints);
  read_values(state.velocities, joints);
  for (size_t k = 0; k < points; ++k) {
    JointTrajectoryPoint p;
    int64_t t_ns = 0;
    std::cin >> t_ns;
    p.time_from_start = rclcpp::Duration::from_nanoseconds(t_ns);
    if (has_positions) read_values(p.positions, joints);
    if (has_velocities) read_values(p.velocities, joints);
    msg->points.push_back(p);
  }
  if (!std::cin) {
    std::fprintf(stderr, "bad input points\n");
    return 2;
  }

  Trajectory trajectory;
  trajectory.update(msg);
  const rclcpp::Time arrival(arrival_ns, RCL_ROS_TIME);
  trajectory.set_point_before_trajectory_msg(arrival, state);
  const int64_t start_ns = stamp_ns != 0 ? stamp_ns : arrival_ns;
  const int64_t end_ns = start_ns + rclcpp::Duration(msg->points.back().time_from_start).nanoseconds();
  for (int64_t t_ns = arrival_ns; t_ns <= end_ns + 2 * period_ns; t_ns += period_ns) {
    JointTrajectoryPoint sample;
    joint_trajectory_controller::TrajectoryPointConstIter first, second;
    const bool sampled = trajectory.sample(
      rclcpp::Time(t_ns, RCL_ROS_TIME),
      joint_trajectory_controller::interpolation_methods::InterpolationMethod::VARIABLE_DEGREE_SPLINE, sample,
      first, second);
    std::printf("%.6f", (t_ns - arrival_ns) * 1e-9);
    if (!sampled) {
      std::printf(" nosample\n");
      continue;
    }
    for (double v : sample.positions) std::printf(" %.12g", v);
    for (double v : sample.velocities) std::printf(" %.12g", v);
    std::printf("\n");
  }
  return 0;
}
