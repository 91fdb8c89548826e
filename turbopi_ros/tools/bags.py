"""rosbag2 (sqlite3 or MCAP storage) and single .mcap files through ``rosbags``: pure Python, no ROS install needed
to read or write them, and what it writes ``ros2 bag play``, ``ros2 bag info`` and Foxglove read.

rosbags' message objects (rosbags.typesys) have rclpy's field names (header.stamp.sec/nanosec, encoding, height,
width, step, data, format, name, position) with numeric arrays as numpy arrays, which is all conversions.py reads, so
the node's InputBuffer takes them as they are: no adapter.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Dict, Optional, Tuple

from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.serde import SerdeError
from rosbags.typesys import Stores, get_typestore

# Definitions of the messages this package writes (standard messages: the same from Humble to Kilted, hashes too).
TYPESTORE = get_typestore(Stores.LATEST)
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
IMAGE, COMPRESSED = "sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"
JOINT_STATE, TRAJECTORY = "sensor_msgs/msg/JointState", "trajectory_msgs/msg/JointTrajectory"


def open_bag(path: Path) -> AnyReader:
    """An open reader of a rosbag2 directory (metadata.yaml + sqlite3 or MCAP files) or a single .mcap/.db3 file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"bag {path} does not exist (expected a rosbag2 directory or a .mcap file)")
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise ValueError(f"bag {path} is a directory without metadata.yaml: not a rosbag2 directory")
    if path.is_file() and path.suffix not in (".mcap", ".db3"):
        raise ValueError(f"bag {path}: expected a rosbag2 directory, a .mcap or a .db3 file")
    reader = AnyReader([path], default_typestore=TYPESTORE)
    try:
        reader.open()
    except Exception as e:  # noqa: BLE001 - rosbags raises several kinds; say which file and why
        raise ValueError(f"bag {path} could not be opened: {e}") from None
    return reader


def deserialize(typestore, raw, msgtype: str):
    """CDR bytes -> a rosbags message object. Bytes written by rclpy's serialize_message (Kilted's Fast-CDR 2) can end
    in a few bytes of padding after an empty float64 sequence; rosbags refuses those, rmw ignores them, so do we."""
    try:
        return typestore.deserialize_cdr(raw, msgtype)
    except SerdeError as e:
        if "size mismatch" not in str(e):
            raise
        msgdef = typestore.get_msgdef(msgtype)
        read = msgdef.deserialize_cdr_le if raw[1] else msgdef.deserialize_cdr_be
        return read(memoryview(raw)[4:], 0, msgdef.cls, typestore)[0]


def rclpy_to_cdr(msg, msgtype: str) -> bytes:
    """An rclpy message -> exact CDR bytes (serialize_message's, without its trailing padding, see deserialize)."""
    from rclpy.serialization import serialize_message

    return bytes(TYPESTORE.serialize_cdr(deserialize(TYPESTORE, serialize_message(msg), msgtype), msgtype))


class BagWriter:
    """Writes a rosbag2 bag: ``path`` ending in .mcap is one MCAP file (what Foxglove opens; ``ros2 bag play`` takes it
    too), anything else a rosbag2 directory with ``storage`` ("mcap" or "sqlite3"). Refuses to overwrite."""

    def __init__(self, path: Path, storage: str = "mcap"):
        self.path = Path(path)
        if self.path.exists():
            raise ValueError(f"{self.path} exists already: not overwriting it")
        if storage not in STORAGES:
            raise ValueError(f"storage {storage!r}: expected one of {list(STORAGES)}")
        self.single_file = self.path.suffix == ".mcap"
        if self.single_file:
            storage = "mcap"
            self._tmp: Optional[str] = tempfile.mkdtemp(prefix=".bag-", dir=self.path.parent)
            bag_dir = Path(self._tmp) / self.path.stem
        else:
            self._tmp, bag_dir = None, self.path
        self.writer = Writer(bag_dir, version=Writer.VERSION_LATEST, storage_plugin=STORAGES[storage])
        self.writer.open()
        self._connections: Dict[Tuple[str, str], object] = {}

    def connection(self, topic: str, msgtype: str):
        key = (topic, msgtype)
        if key not in self._connections:
            self._connections[key] = self.writer.add_connection(topic, msgtype, typestore=TYPESTORE)
        return self._connections[key]

    def write(self, topic: str, msgtype: str, t_ns: int, cdr: bytes) -> None:
        self.writer.write(self.connection(topic, msgtype), int(t_ns), cdr)

    def write_msg(self, topic: str, t_ns: int, msg) -> None:
        """A rosbags message object (TYPESTORE's classes or a reader's: same fields)."""
        msgtype = msg.__msgtype__
        self.write(topic, msgtype, t_ns, bytes(TYPESTORE.serialize_cdr(msg, msgtype)))

    def close(self) -> None:
        self.writer.close()
        if self._tmp is not None:
            bag_dir = Path(self._tmp) / self.path.stem
            shutil.move(str(bag_dir / f"{self.path.stem}.mcap"), str(self.path))
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
