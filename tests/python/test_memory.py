"""VramTracker, DeviceMemory and the package surface through Python."""

import pytest

import kvinfer
from kvinfer import _core


def test_build_info_and_cuda_available():
    info = kvinfer.build_info()
    assert info["version"] == kvinfer.__version__
    assert isinstance(info["cuda"], bool)
    assert set(info) >= {"version", "cuda", "cuda_architectures", "cxx_compiler", "cuda_compiler"}
    assert isinstance(kvinfer.cuda_available(), bool)
    if not info["cuda"]:
        assert kvinfer.cuda_available() is False


def test_tracker_report_peaks_and_release(device):
    t = kvinfer.VramTracker()
    a = kvinfer.DeviceMemory(1000, device, "weights", t)
    b = kvinfer.DeviceMemory(300, device, "activations", t)
    rep = t.report()
    assert rep["purposes"]["weights"] == {"bytes": 1000, "peak_bytes": 1000, "allocations": 1, "total_allocations": 1}
    assert rep["total_bytes"] == t.total_bytes == 1300
    b.free()
    b.free()  # idempotent
    assert t.bytes("activations") == 0
    assert t.report()["purposes"]["activations"]["peak_bytes"] == 300
    del a
    assert t.total_bytes == 0 and t.peak_bytes == 1300


def test_context_manager_releases(device):
    t = kvinfer.VramTracker()
    with kvinfer.DeviceMemory(4096, device, "workspace", t) as m:
        assert m.nbytes == 4096 and m.device == device and m.purpose == "workspace"
        assert m.data_ptr % 256 == 0
        assert t.total_bytes == 4096
    assert t.total_bytes == 0


def test_budget_rejection_is_memory_error_with_numbers(device):
    t = kvinfer.VramTracker(budget_bytes=10_000)
    held = kvinfer.DeviceMemory(6000, device, "weights", t)
    with pytest.raises(kvinfer.OutOfMemoryError) as e:
        kvinfer.DeviceMemory(5000, device, "kv_cache", t)
    assert isinstance(e.value, MemoryError)
    msg = str(e.value)
    for part in ("5,000 B", "'kv_cache'", "weights 6,000 B", "budget of 10,000 B", device):
        assert part in msg, (part, msg)
    assert t.total_bytes == 6000
    del held


def test_budget_is_settable_and_validated():
    t = kvinfer.VramTracker()
    assert t.budget_bytes is None
    t.budget_bytes = 100
    with pytest.raises(kvinfer.OutOfMemoryError):
        kvinfer.DeviceMemory(101, "cpu", "weights", t)
    with pytest.raises(ValueError, match="budget_bytes=-1"):
        kvinfer.VramTracker(budget_bytes=-1)


def test_default_tracker_used_when_none_given():
    d = kvinfer.default_tracker()
    before = d.total_bytes
    m = kvinfer.DeviceMemory(123, "cpu", "scratch")
    assert d.total_bytes == before + 123
    m.free()
    assert d.total_bytes == before


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:99", "", "CPU"])
def test_bad_device_is_value_error(bad):
    with pytest.raises(ValueError, match="device="):
        kvinfer.DeviceMemory(16, bad)


@pytest.mark.cuda
def test_cuda_memory_info_moves_with_allocations():
    free0, total = _core.cuda_mem_info(0)
    m = kvinfer.DeviceMemory(256 << 20, "cuda:0", "workspace", kvinfer.VramTracker())
    free1, _ = _core.cuda_mem_info(0)
    assert free0 - free1 >= 256 << 20
    m.free()
    free2, _ = _core.cuda_mem_info(0)
    assert free2 >= free0 - (4 << 20)


def test_native_module_is_private():
    assert "_core" not in kvinfer.__all__
    assert kvinfer.KVCache is _core.KVCache
