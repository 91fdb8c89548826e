"""``python -m turbopi_ros.tools.gpu_report``: the report (scripts/gpu_report.sh runs this)."""
import sys

from .run import main

sys.exit(main())
