"""What runs around the node: demo, fake_robot, verify, bench, replay, soak, and their reports."""
