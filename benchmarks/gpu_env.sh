# Environment for building and testing on the GPU machine (source it): offline install, sm_90 only,
# CUDA required, and the system compiler. A compiler that links libstdc++ statically into the
# extension crashes the process when an exception meets the shared libstdc++ that numpy loaded.
export KVINFER_OFFLINE=1 CUDAARCHS=90 KVINFER_CUDA=ON KVINFER_BENCH_OPS=ON PYTHONUNBUFFERED=1
export CC=/usr/bin/gcc CXX=/usr/bin/g++ CUDAHOSTCXX=/usr/bin/g++
