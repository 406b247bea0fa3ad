# Decides KVINFER_WITH_CUDA and finds what the CUDA backend needs: nvcc, the toolkit (runtime),
# and the cuBLAS headers. cuBLAS itself is loaded at run time (cpp/core/cublas_loader.cpp), so only its
# headers are needed here; they come from KVINFER_CUBLAS_INCLUDE_DIR (environment), the CUDA
# toolkit, or the pip package nvidia-cublas of the Python that runs the build.
set(KVINFER_WITH_CUDA OFF)
set(KVINFER_BACKEND_WHY "KVINFER_CUDA=OFF")
if(NOT KVINFER_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
      # Ampere, Ada and Hopper; override with -DCMAKE_CUDA_ARCHITECTURES=90 (or CUDAARCHS=90).
      set(CMAKE_CUDA_ARCHITECTURES "80;86;89;90")
    endif()
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    find_package(CUDAToolkit REQUIRED)

    # cuBLAS headers: toolkit first, then the nvidia-cublas wheel of the building Python.
    set(_cublas_hints $ENV{KVINFER_CUBLAS_INCLUDE_DIR} ${CUDAToolkit_INCLUDE_DIRS})
    find_package(Python COMPONENTS Interpreter QUIET)
    if(Python_EXECUTABLE)
      execute_process(
        COMMAND ${Python_EXECUTABLE} -c
          "import importlib.util as u, os; s = u.find_spec('nvidia'); print(';'.join(os.path.join(p, d, 'include') for p in (s.submodule_search_locations or []) for d in ('cu13', 'cu12', 'cublas')))"
        OUTPUT_VARIABLE _wheel_includes OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
      list(APPEND _cublas_hints ${_wheel_includes})
    endif()
    find_path(KVINFER_CUBLAS_INCLUDE_DIR cublas_v2.h HINTS ${_cublas_hints})
    if(KVINFER_CUBLAS_INCLUDE_DIR)
      set(KVINFER_WITH_CUDA ON)
      set(KVINFER_BACKEND_WHY "nvcc ${CMAKE_CUDA_COMPILER_VERSION} (${CMAKE_CUDA_COMPILER}), cuBLAS headers in ${KVINFER_CUBLAS_INCLUDE_DIR}, architectures ${CMAKE_CUDA_ARCHITECTURES}")
    elseif(KVINFER_CUDA STREQUAL "ON")
      message(FATAL_ERROR "KVINFER_CUDA=ON but cublas_v2.h was not found (pip install nvidia-cublas)")
    else()
      set(KVINFER_BACKEND_WHY "nvcc found but not the cuBLAS headers (CUDA toolkit or pip install nvidia-cublas)")
      message(STATUS "kvinfer: cuBLAS headers not found; building the CPU backend only")
    endif()
  elseif(KVINFER_CUDA STREQUAL "ON")
    message(FATAL_ERROR "KVINFER_CUDA=ON but no CUDA compiler (nvcc) was found")
  else()
    set(KVINFER_BACKEND_WHY "no CUDA compiler (nvcc) found")
    message(STATUS "kvinfer: no CUDA compiler; building the CPU backend only")
  endif()
endif()
if(KVINFER_WITH_CUDA)
  set(_backend "CPU + CUDA")
else()
  set(_backend "CPU only")
endif()
message(STATUS "kvinfer: backend ${_backend}: ${KVINFER_BACKEND_WHY}")
# One line that tests/run.sh shows, since pip hides CMake's output.
file(WRITE "${CMAKE_BINARY_DIR}/kvinfer-backend.txt" "${_backend}: ${KVINFER_BACKEND_WHY}\n")
