"""ament_python package; also installs with plain `pip install .` into a venv."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "turbopi_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.launch.py")),
        ("share/" + PACKAGE + "/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    # The runtime deps are pinned in requirements.txt (venv) or come from rosdep (package.xml) and pip (torch):
    # install_requires stays minimal as in every ament_python package, so colcon never tries to fetch anything.
    install_requires=["setuptools"],
    # `colcon test` runs pytest (not unittest, which finds nothing here) when pytest is a test dependency
    extras_require={"test": ["pytest"]},
    python_requires=">=3.10",
    zip_safe=True,
    maintainer="turbopi_ros maintainers",
    maintainer_email="turbopi@example.com",
    description="Real-time pi0 / pi0.5 VLA policies as a ROS 2 node",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "turbopi_node = turbopi_ros.node:main",
            "fake_robot = turbopi_ros.tools.fake_robot:main",
            "turbopi-verify = turbopi_ros.tools.verify:main",
            "turbopi-bench = turbopi_ros.tools.bench:main",
            "turbopi-bench-preprocess = turbopi_ros.tools.bench_preprocess:main",
            "turbopi-demo = turbopi_ros.tools.demo:main",
            "turbopi-exec-bench = turbopi_ros.tools.execution_bench:main",
            "turbopi-replay = turbopi_ros.tools.replay:main",
            "turbopi-soak = turbopi_ros.tools.soak:main",
            "turbopi-kernel-targets = turbopi_ros.tools.kernel_targets:main",
            "turbopi-startup-bench = turbopi_ros.tools.startup_bench:main",
        ],
    },
)
