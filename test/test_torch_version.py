"""model/torch_version.py: the oldest torch the package runs on, and the error an older one gets."""
import pytest
import torch

from turbopi_ros.model import torch_version


@pytest.mark.parametrize("version,parsed", [("2.5.0a0+872d972e41.nv24.08", (2, 5)), ("2.4.1+cu121", (2, 4)),
                                            ("2.13.0+cpu", (2, 13)), ("2.10.0.dev20250101", (2, 10)), ("3.0", (3, 0))])
def test_versions_parse_as_pip_and_jetson_wheels_write_them(version, parsed):
    assert torch_version.parse(version) == parsed


@pytest.mark.parametrize("version", ["2.4.1+cu121", "2.3.0a0+ebedce2.nv24.02", "1.13.1"])
def test_an_older_torch_is_refused_with_what_it_is_and_what_to_install(version):
    with pytest.raises(ImportError) as e:
        torch_version.check(version, "/opt/torch")
    assert str(e.value) == (f"turbopi_ros needs torch 2.5 or newer; this Python has torch {version} (/opt/torch): "
                            "install torch 2.5+ (on a Jetson, NVIDIA's torch wheel for your JetPack)")


@pytest.mark.parametrize("version", ["2.5.1+cu124", "2.5.0a0+872d972e41.nv24.08", "2.13.0", "3.1.0"])
def test_2_5_and_newer_pass(version):
    torch_version.check(version)


def test_the_installed_torch_passes_and_text_that_is_no_version_is_an_error():
    torch_version.check()  # the installed one (the suite runs on it)
    with pytest.raises(ValueError, match="not a torch version: 'nightly'"):
        torch_version.parse("nightly")
    assert torch_version.parse(torch.__version__) >= torch_version.MIN_TORCH
