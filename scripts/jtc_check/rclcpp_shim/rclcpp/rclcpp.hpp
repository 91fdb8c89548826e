// The harness's stand-in for rclcpp/rclcpp.hpp, which the controller's interpolation_methods.hpp includes for one
// logger: rclcpp's Time and Duration (built from rclcpp's own sources) and a logger that logs nothing. The whole
// rclcpp would need its generated headers and libraries that the PyPI wheels do not carry.
#pragma once
#include "rclcpp/duration.hpp"
#include "rclcpp/time.hpp"
namespace rclcpp
{
struct Logger {};
inline Logger get_logger(const char *) { return {}; }
}  // namespace rclcpp
#define RCLCPP_INFO(...) do {} while (0)
