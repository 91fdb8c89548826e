"""``python -m turbopi_ros.fake_robot``, kept where scripts and launch files start it: tools/fake_robot.py."""
from .tools.fake_robot import main

if __name__ == "__main__":
    main()
