"""kernel_choice.py: per op and shape, the fastest candidate that matches the reference, measured once, kept, and
saved to the cache directory. Timed here on the host (time_on_cpu); on a GPU the same code times CUDA graphs.
The split kernels' own candidates run under Triton's interpreter in fused_interpreter_checks.py ("choice")."""
import json
import time

import pytest
import torch
import torch.nn.functional as F

from turbopi_ros.model import kernel_choice
from turbopi_ros.model.kernel_choice import FILE_NAME, KernelChoices, mismatch


def row_by_row(x, w):
    """x @ w^T one row at a time: the same values as F.linear (to rounding), many times slower, and 2 ms more a
    call: on a loaded CI machine a row-by-row loop alone once timed faster than F.linear (whose threads waited for
    a core), and the choice these tests check is the fastest, not how the host schedules threads."""
    time.sleep(0.002)
    return torch.stack([F.linear(x[i:i + 1], w)[0] for i in range(x.shape[0])])


def off_by_a_tenth(x, w):
    return F.linear(x, w) * 1.1


def raises(x, w):
    raise ValueError("this config does not compile here")


class Counted:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


@pytest.fixture
def args():
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # F.linear on one thread: none of its threads waits for a busy core
    yield torch.randn(48, 256, generator=g), torch.randn(256, 256, generator=g)
    torch.set_num_threads(threads)


def choices(**kw):
    return KernelChoices(time_on_cpu=True, calls=5, reps=3, **kw)


def test_the_fastest_matching_candidate_is_chosen_and_the_others_are_rejected_with_a_reason(args):
    c = choices()
    picked = c.choose("linear", "48x256", {"row_by_row": row_by_row, "linear": F.linear, "wrong": off_by_a_tenth,
                                            "raises": raises}, args, reference="row_by_row")
    assert picked == "linear"
    (made,) = c.choices()
    assert set(made.times_us) == {"row_by_row", "linear"}
    assert made.times_us["linear"] < made.times_us["row_by_row"]
    assert "differs from the reference" in made.rejected["wrong"]
    assert made.rejected["raises"] == "ValueError: this config does not compile here"
    assert "linear" in made.line() and "rejected" in made.line()
    assert c.to_dict()["count"] == 1 and c.to_dict()["choices"][0]["chosen"] == "linear"


def test_a_choice_is_measured_once_per_shape(args):
    c = choices()
    fast, slow = Counted(F.linear), Counted(row_by_row)
    assert c.choose("linear", "48x256", {"slow": slow, "fast": fast}, args, reference="slow") == "fast"
    measured = fast.calls, slow.calls
    assert measured[0] > 1 and measured[1] > 1
    assert c.choose("linear", "48x256", {"slow": slow, "fast": fast}, args, reference="slow") == "fast"
    assert (fast.calls, slow.calls) == measured  # kept, not measured again
    c.choose("linear", "8x256", {"slow": slow, "fast": fast}, (args[0][:8], args[1]), reference="slow")
    assert fast.calls > measured[0]  # another shape is measured on its own
    assert len(c.choices()) == 2


def test_nothing_is_chosen_off_cuda_or_when_off(args):
    counted = Counted(F.linear)
    assert KernelChoices().choose("linear", "k", {"ref": counted}, args, reference="ref") is None  # CPU: not timed
    off = choices()
    off.enabled = False
    assert off.choose("linear", "k", {"ref": counted}, args, reference="ref") is None
    assert counted.calls == 0


def test_when_the_measuring_fails_the_reference_is_kept(args):
    c = choices()
    picked = c.choose("linear", "k", {"ref": raises, "other": F.linear}, args, reference="ref")
    assert picked == "ref"
    assert "this config does not compile here" in c.choices()[0].rejected["(measuring)"]


def test_mismatch_names_what_differs():
    ref = torch.ones(4, 4)
    assert mismatch(ref + 2.0 ** -8, ref) is None
    assert "differs from the reference by 0.1" in mismatch(ref + 0.1, ref)
    assert mismatch(torch.full((4, 4), float("nan")), ref) == "gave a non-finite value"
    assert "gave [4, 2]" in mismatch(torch.ones(4, 2), ref)
    assert "bfloat16" in mismatch(ref.bfloat16(), ref)


def test_choices_are_saved_and_a_later_start_launches_them_without_timing(tmp_path, args):
    first = choices()
    first.persist(str(tmp_path), torch.device("cpu"))
    assert first.choose("linear", "48x256", {"slow": row_by_row, "fast": F.linear}, args, reference="slow") == "fast"
    saved = json.loads((tmp_path / FILE_NAME).read_text())
    assert saved["choices"] == [{"op": "linear", "key": "48x256", "chosen": "fast"}]
    assert saved["torch"] == torch.__version__ and saved["device"] == "cpu" and len(saved["code"]) == 16

    later = choices()
    later.persist(str(tmp_path), torch.device("cpu"))
    slow, fast = Counted(row_by_row), Counted(F.linear)
    assert later.choose("linear", "48x256", {"slow": slow, "fast": fast}, args, reference="slow") == "fast"
    assert slow.calls == fast.calls == 0 and later.choices()[0].loaded
    # A saved name that is no longer a candidate (the kernels' configs changed) is measured again.
    assert later.choose("linear", "48x256", {"slow": slow, "quick": fast}, args, reference="slow") == "quick"


def test_choices_saved_for_other_software_are_measured_again(tmp_path, args):
    c = choices()
    c.persist(str(tmp_path), torch.device("cpu"))
    c.choose("linear", "48x256", {"slow": row_by_row, "fast": F.linear}, args, reference="slow")
    path = tmp_path / FILE_NAME
    data = json.loads(path.read_text())
    path.write_text(json.dumps(dict(data, torch="0.0.0")))
    later = choices()
    later.persist(str(tmp_path), torch.device("cpu"))
    assert "choosing again" in later.load_note and "0.0.0" in later.load_note
    assert later.choices() == []
    path.write_text("{not json")
    unreadable = choices()
    unreadable.persist(str(tmp_path), torch.device("cpu"))
    assert "unreadable" in unreadable.load_note and unreadable.choices() == []


def test_graph_us_cycles_through_its_calls_on_the_host():
    seen = []
    us = kernel_choice.graph_us([lambda: seen.append(0), lambda: seen.append(1)], torch.device("cpu"), calls=4,
                                reps=2)
    assert seen == [0, 1, 0, 1] * 2 and us > 0


def test_graph_us_captures_on_the_gpu_of_its_inputs(monkeypatch):
    """The timing graph of a candidate on cuda:1 is captured on a cuda:1 stream (torch.cuda.graph's own stream is
    on the GPU current when the process made its first graph: an empty graph, every candidate timed at ~0 us)."""
    from fake_cuda_devices import FakeCuda

    cuda = FakeCuda(monkeypatch, current=0)
    seen = []
    kernel_choice.graph_us(lambda: seen.append(cuda.current), torch.device("cuda:1"), calls=2, reps=1)
    assert cuda.captures == [1], cuda.captures
    assert set(seen) == {1}, seen
    assert cuda.current == 0
