# Sourced by demo.sh and test.sh: each run gets its own DDS domain on this host only, so parallel runs and other
# ROS graphs cannot cross-talk; the rmw implementation is the one requirements-<distro>.txt installs.
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( (RANDOM % 101) + 1 ))}
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
