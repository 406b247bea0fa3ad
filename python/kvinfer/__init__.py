"""kvinfer: LLM inference with a C++/CUDA core, exact VRAM accounting and a CPU fallback."""

from kvinfer._core import (
    ContextOverflowError,
    CudaError,
    DeviceMemory,
    KVCache,
    KVCacheConfig,
    OutOfMemoryError,
    VramTracker,
    default_tracker,
)
from kvinfer._core import build_info as _build_info
from kvinfer._core import cuda_device_count as _cuda_device_count

__version__ = _build_info()["version"]


def build_info() -> dict:
    """How this kvinfer was built: version, CUDA on/off, CUDA architectures, compilers."""
    return _build_info()


def cuda_available() -> bool:
    """True when the CUDA backend is compiled in and a CUDA device is usable right now."""
    return _build_info()["cuda"] and _cuda_device_count() > 0


from kvinfer.llm import LLM, RequestOutput  # noqa: E402
from kvinfer.planner import MemoryPlan, plan_memory  # noqa: E402
from kvinfer.sampling import SamplingParams  # noqa: E402

__all__ = [
    "LLM",
    "MemoryPlan",
    "RequestOutput",
    "SamplingParams",
    "plan_memory",
    "ContextOverflowError",
    "CudaError",
    "DeviceMemory",
    "KVCache",
    "KVCacheConfig",
    "OutOfMemoryError",
    "VramTracker",
    "build_info",
    "cuda_available",
    "default_tracker",
    "__version__",
]
