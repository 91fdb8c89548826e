"""Bad files through the node's start-up (the cases and their messages: test_bad_input_files.py): the message after
'cannot start:', exit 1, no traceback, for four of them."""
import re

import pytest
import yaml

from test_bad_input_files import (CASES, _params, good, nan_norm_stats, pickle_in_place_of_weights,  # noqa: F401
                                  tokenizer_not_sentencepiece, truncated)

pytest.importorskip("rclpy")

from ros_helpers import isolate_ros_domain, node_params, run_node_starts  # noqa: E402

THROUGH_THE_NODE = (truncated, pickle_in_place_of_weights, nan_norm_stats, tokenizer_not_sentencepiece)


@pytest.fixture(scope="module")
def node_outcomes(good):  # noqa: F811 - the fixture imported above
    """The node started on each of THROUGH_THE_NODE, a few at a time (each exits at start): (code, output) per
    case."""
    isolate_ros_domain()
    args = {}
    for case in THROUGH_THE_NODE:
        p = _params(good, case)
        params = dict(node_params(), **{"model.checkpoint": p["checkpoint"], "model.tokenizer": p["tokenizer"],
                                        "model.norm_stats": p["norm_stats"]})
        path = good[0] / f"{case.__name__}.yaml"
        path.write_text(yaml.safe_dump({"/**/turbopi_node": {"ros__parameters": params}}))
        args[case] = ["--ros-args", "--params-file", str(path)]
    return run_node_starts(args)


@pytest.mark.parametrize("case", THROUGH_THE_NODE, ids=[c.__name__ for c in THROUGH_THE_NODE])
def test_the_node_cannot_start(node_outcomes, case):
    code, out = node_outcomes[case]
    assert code == 1, out
    assert re.search("cannot start: .*" + CASES[case], out), out
    assert "Traceback" not in out, out
