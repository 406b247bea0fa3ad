import pytest

import kvinfer

DEVICES = ["cpu", pytest.param("cuda:0", marks=pytest.mark.cuda)]


def pytest_collection_modifyitems(config, items):
    if kvinfer.cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
