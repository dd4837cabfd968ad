#!/usr/bin/env bash
# TensorFlow for a GPU machine with no network and no TensorFlow, for the GPU check of issue 16
# (BENCHMARKS.md, "GPU check (issue 16)"): packed here into chunks small enough to copy one at a
# time, unpacked there.
#
#   benchmarks/gpu_bundle.sh pack DIR [PYTHON]  # here (needs pip's index): DIR/c00, c01, ... and DIR/deps/
#   benchmarks/gpu_bundle.sh unpack DIR         # there, in this repository, with DIR's files copied to DIR
#   source "${SITE:-/tmp/site}/ks_env.sh" && benchmarks/gpu_check.sh
#
# The bundle holds the machine's Python's (PYTHON, default 3.12) TensorFlow wheel without its
# C++ headers and CUDA 12's cuBLAS and runtime (TensorFlow 2.21 is built against CUDA 12.5), as
# one xz-compressed tar cut into CHUNK_BYTES pieces (default 58,500,000 bytes: under a 64 MiB
# copy limit with this repository beside one), and in DIR/deps the pure-Python packages the
# check imports that a CUDA image without TensorFlow lacks (Keras, gin, ...) and the tar's
# SHA-256. From the machine's own CUDA (CUDA_HOME, default /usr/local/cuda; any version) come
# cuDNN 9, cuSPARSE, ptxas and libdevice, and, for TensorFlow's start-up check only (our steps
# call neither), cuFFT and cuSOLVER under their CUDA 12 names where those are missing.
set -euo pipefail

TF_VERSION=${TF_VERSION:-2.21.0}
CHUNK_BYTES=${CHUNK_BYTES:-58500000}
SITE=${SITE:-/tmp/site}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
usage="usage: benchmarks/gpu_bundle.sh pack DIR [PYTHON] | unpack DIR"

pack() {
    local dir=$1 python=${2:-3.12}
    mkdir -p "$dir/deps" "$dir/wheels" "$dir/stage"
    local fetch=(python -m pip download -q --no-deps --only-binary=:all: --python-version "$python"
                 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
                 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    "${fetch[@]}" -d "$dir/wheels" "tensorflow==$TF_VERSION" nvidia-cublas-cu12==12.5.3.2 \
        nvidia-cuda-runtime-cu12==12.5.82
    # The releases this project's tests ran with (setup.cfg's ranges), beside TensorFlow 2.21.
    "${fetch[@]}" -d "$dir/deps" keras==3.15.1 namex==0.1.0 optree==0.20.0 gast==0.7.0 astunparse==1.6.3 \
        termcolor==3.3.0 gin-config==0.5.0 google-pasta==0.2.0 ml_dtypes==0.6.0 protobuf==7.36.2
    for wheel in "$dir"/wheels/*.whl; do unzip -qo -d "$dir/stage" "$wheel"; done
    rm -rf "$dir/stage/tensorflow/include" "$dir"/stage/nvidia/*/include "$dir"/stage/nvidia/cublas/lib/libnvblas*
    tar -C "$dir/stage" -cf - . | xz -T0 -6 > "$dir/bundle.tar.xz"
    sha256sum < "$dir/bundle.tar.xz" | cut -d' ' -f1 > "$dir/deps/bundle.sha256"
    split -b "$CHUNK_BYTES" -d -a 2 "$dir/bundle.tar.xz" "$dir/c"
    rm -rf "$dir/stage" "$dir/wheels" "$dir/bundle.tar.xz"
    echo "gpu_bundle: $(ls "$dir"/c?? | wc -l) chunks of at most $CHUNK_BYTES bytes and deps/ in $dir"
}

unpack() {
    local dir=$1 expected actual
    if [ ! -f "$dir/c00" ] || [ ! -f "$dir/deps/bundle.sha256" ]; then
        echo "gpu_bundle: $dir has no c00 or no deps/bundle.sha256: copy there all that 'pack' wrote"
        exit 1
    fi
    expected=$(cat "$dir/deps/bundle.sha256")
    actual=$(cat "$dir"/c?? | sha256sum | cut -d' ' -f1)
    if [ "$actual" != "$expected" ]; then
        echo "gpu_bundle: the chunks in $dir do not make the bundle (SHA-256 $actual, expected $expected): copy them again"
        exit 1
    fi
    mkdir -p "$SITE/cuda12_names"
    cat "$dir"/c?? | xz -T0 -d | tar -C "$SITE" -xf -
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$dir"/deps/*.whl
    local cuda_lib=$CUDA_HOME/targets/x86_64-linux/lib
    [ -d "$cuda_lib" ] || cuda_lib=$CUDA_HOME/lib64
    for name in cufft:11:12 cusolver:11:12; do
        IFS=: read -r lib old new <<< "$name"
        [ -e "$cuda_lib/lib$lib.so.$old" ] || ln -sf "$cuda_lib/lib$lib.so.$new" "$SITE/cuda12_names/lib$lib.so.$old"
    done
    cat > "$SITE/ks_env.sh" <<EOF
export PYTHON=python3 PYTHONPATH=$SITE:$PWD PATH=$CUDA_HOME/bin:\$PATH
export LD_LIBRARY_PATH=$SITE/nvidia/cublas/lib:$SITE/nvidia/cuda_runtime/lib:$SITE/cuda12_names:$cuda_lib:\${LD_LIBRARY_PATH:-}
export XLA_FLAGS="--xla_gpu_cuda_data_dir=$CUDA_HOME \${XLA_FLAGS:-}" CUDA_MODULE_LOADING=LAZY
EOF
    # shellcheck disable=SC1091
    source "$SITE/ks_env.sh"
    # TensorFlow's own log says which library it could not load when it sees no GPU.
    TF_CPP_MIN_LOG_LEVEL=0 python3 -c "import tensorflow as tf; print('gpu_bundle: TensorFlow', tf.__version__, \
'sees', tf.config.list_physical_devices('GPU'))"
}

case "${1:-}" in
    pack) [ $# -ge 2 ] || { echo "$usage"; exit 2; }; pack "$2" "${3:-}" ;;
    unpack) [ $# -eq 2 ] || { echo "$usage"; exit 2; }; unpack "$2" ;;
    *) echo "$usage"; exit 2 ;;
esac
