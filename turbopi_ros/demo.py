"""``python -m turbopi_ros.demo``, kept where scripts and launch files start it: tools/demo.py."""
from .tools.demo import main

if __name__ == "__main__":
    main()
