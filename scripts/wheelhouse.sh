#!/usr/bin/env bash
# Air-gapped classroom set-up (docs/trainer-guide.md): build a wheelhouse from requirements.lock
# and infra/checkov-requirements.txt on a machine with internet, then build .venv and chapter
# 4's checkov tool environment (.venv-checkov) from it on a machine without internet.
#
#   scripts/wheelhouse.sh build   [DIR]          download every wheel of the lock into DIR, and
#                                                checkov's into DIR/checkov/ (build-checkov)
#   scripts/wheelhouse.sh install [DIR] [VENV]   create VENV, then .venv-checkov, from DIR only:
#                                                no index, no network
#   scripts/wheelhouse.sh check   [VENV] [ENV]   imports + the 05a chapter through the pipeline,
#                                                and ENV's checkov --version (.venv-checkov)
#   scripts/wheelhouse.sh build-checkov   [DIR]               only DIR/checkov/
#   scripts/wheelhouse.sh install-checkov [DIR] [ENV] [VENV]  only ENV (default .venv-checkov)
#                                                from DIR/checkov/, by VENV's ensure_checkov()
#
# Defaults: DIR=wheelhouse, VENV=.venv. Run from anywhere; paths are relative to the checkout.
# Environment:
#   PYTHON      the interpreter for the venv (default python3; must match the wheelhouse's)
#   UV_VERSION  the uv that bootstraps `uv pip sync` (default 0.13.8, as in the Makefile)
#   TARGET      build for other machines than this one: linux-x86_64, linux-aarch64,
#               macos-arm64, macos-x86_64, windows-amd64 (default: this machine)
#   TARGET_PYTHON  the learners' Python minor version for a TARGET build (default 3.11)
#   GLIBC          the oldest glibc the learners run, for TARGET=linux-* (default 2.28)
#   MACOS_VERSION  the oldest macOS the learners run, for TARGET=macos-* (default 14.0)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
UV_VERSION=${UV_VERSION:-0.13.8}
LOCK=requirements.lock
CHECKOV_REQUIREMENTS=infra/checkov-requirements.txt  # hdb_mlops.cloud.lint.REQUIREMENTS
CHECKOV_MARKER=hdb-mlops-requirements.sha256        # hdb_mlops.cloud.lint._MARKER

die() { echo "wheelhouse.sh: $*" >&2; exit 1; }
# tenths of a second (whole seconds on bash < 5, such as macOS's /bin/bash 3.2)
now_ds() {
    local t=${EPOCHREALTIME:-}
    if [ -n "$t" ]; then t=${t//[!0-9]/}; echo $((10#$t / 100000)); else echo $((SECONDS * 10)); fi
}
# timed LABEL CMD...: run CMD, then print how long it took; returns CMD's status (set -e does
# not stop a function that runs in an `if`)
timed() {
    local label=$1 t0 rc=0; t0=$(now_ds); shift
    "$@" || rc=$?
    local ds=$(( $(now_ds) - t0 ))
    printf 'wheelhouse: %-34s %4d.%d s\n' "$label" $((ds / 10)) $((ds % 10))
    return $rc
}
sha256() { if command -v sha256sum >/dev/null; then sha256sum "$@"; else shasum -a 256 "$@"; fi; }

# The lock's pins that apply to the target, one `name==version` a line, for Python
# <minor>.<PATCH> (argument 1). The lock is universal: markers for darwin, win32, linux and
# Python 3.11 / 3.12+, and soupsieve has one pin below 3.11.5 and one from 3.11.5 on.
pins_for_target() {
    "$PYTHON" - "$LOCK" "${TARGET:-}" "${TARGET_PYTHON:-}" "$1" <<'EOF'
import sys
from pip._vendor.packaging.markers import default_environment
from pip._vendor.packaging.requirements import Requirement

lock, target, minor, patch = sys.argv[1:5]
env = default_environment()
if target:
    system, machine = target.split("-", 1)
    env.update({
        "linux": dict(sys_platform="linux", platform_system="Linux", os_name="posix"),
        "macos": dict(sys_platform="darwin", platform_system="Darwin", os_name="posix"),
        "windows": dict(sys_platform="win32", platform_system="Windows", os_name="nt"),
    }[system])
    env["platform_machine"] = {"amd64": "AMD64", "arm64": "arm64"}.get(machine, machine)
    env.update(implementation_name="cpython", platform_python_implementation="CPython")
minor = minor or env["python_version"]
env.update(python_version=minor, python_full_version=f"{minor}.{patch}")
for line in open(lock):
    if line.strip() and not line[0].isspace() and not line.startswith(("#", "-")):
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            print(f"{req.name}{req.specifier}")
EOF
}

# pip's platform options for a TARGET build and the learners' Python <minor>.<PATCH>
# (argument 1), for Requires-Python; none for this machine: pip uses its own tags.
platform_args() {
    local minor=${TARGET_PYTHON:-3.11} mac=${MACOS_VERSION:-14.0}
    local abi="cp${minor/./}" args=()
    case "${TARGET:-}" in
        "") return 0 ;;
        linux-x86_64|linux-aarch64)
            # manylinux wheels for glibc up to GLIBC, newest first (as pip itself prefers)
            local arch=${TARGET#linux-} glibc=${GLIBC:-2.28} g
            for g in $(seq "${glibc#2.}" -1 5); do
                args+=(--platform "manylinux_2_${g}_$arch")
            done
            for g in 2014 2010 1; do args+=(--platform "manylinux${g}_$arch"); done ;;
        macos-arm64|macos-x86_64)
            local arch=${TARGET#macos-}
            args+=(--platform "macosx_${mac//./_}_$arch" --platform "macosx_${mac//./_}_universal2")
            ;;
        windows-amd64) args+=(--platform win_amd64) ;;
        *) die "unknown TARGET '$TARGET'" ;;
    esac
    args+=(--python-version "$minor.$1" --implementation cp --abi "$abi" --abi abi3 --abi none)
    printf '%s\n' "${args[@]}"
}

build() {
    local dir=${1:-wheelhouse}
    mkdir -p "$dir"
    platform_args 0 >/dev/null  # an unknown TARGET stops here
    # pins.txt: the lock's pins for the newest patch release of the learners' Python, and
    # setuptools + wheel (the build backend of `uv pip install -e .`). pins-extra.txt, fetched
    # apart because pip refuses two versions of one package in one call: the uv that
    # bootstraps the install (the lock pins its own uv) and the pins that differ for a .0 patch
    # release, since the learners' patch level is not known when the wheelhouse is built.
    pins_for_target 99 >"$dir/pins.txt"
    printf '%s\n' "setuptools>=69" "wheel" >>"$dir/pins.txt"
    { pins_for_target 0; echo "uv==$UV_VERSION"; } | grep -vxF -f "$dir/pins.txt" \
        >"$dir/pins-extra.txt" || true
    echo "wheelhouse: $(cat "$dir"/pins*.txt | wc -l) pins for ${TARGET:-this machine} into $dir/"
    local pins patch a; local -a plat
    for pins in "$dir/pins.txt" "$dir/pins-extra.txt"; do
        [ -s "$pins" ] || continue
        [ "$pins" = "$dir/pins.txt" ] && patch=99 || patch=0
        plat=(); while IFS= read -r a; do plat+=("$a"); done < <(platform_args $patch)
        timed "pip download ($(basename "$pins"))" \
            "$PYTHON" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
            ${plat[@]+"${plat[@]}"} -d "$dir" -r "$pins"
    done
    cp "$LOCK" "$dir/requirements.lock"
    (cd "$dir" && sha256 -- *.whl >SHA256SUMS)
    echo "wheelhouse: $(find "$dir" -maxdepth 1 -name '*.whl' | wc -l) wheels, $(du -sh "$dir" | cut -f1) in $dir/"
    build_checkov "$dir"
}

# The wheels of chapter 4's checkov tool environment (hdb_mlops.cloud.lint.ensure_checkov) into
# DIR/checkov/, with a copy of its requirements and SHA256SUMS of its own. A folder apart: its
# pins differ from the lock's (packaging, networkx, boto3, ...), and the --find-links DIR of
# `uv pip sync` must not offer them to the course's venv.
build_checkov() {
    local dir=${1:-wheelhouse}/checkov a; local -a plat=()
    mkdir -p "$dir"
    while IFS= read -r a; do plat+=("$a"); done < <(platform_args 99)
    cp "$CHECKOV_REQUIREMENTS" "$dir/checkov-requirements.txt"
    echo "wheelhouse: $(grep -c '^[A-Za-z0-9]' "$CHECKOV_REQUIREMENTS") checkov pins for ${TARGET:-this machine} into $dir/"
    # Every pin of checkov 3.3.30 has a wheel on PyPI for Linux x86-64, macOS arm64 and Windows
    # amd64 (checked for CPython 3.11). Should a later pin have only an sdist, pip download
    # fails; then, for this machine only, `pip wheel` builds that wheel here (it needs the
    # index for the build backend, and maybe a compiler) and keeps the other wheels as they
    # are. A TARGET build cannot build wheels for another machine, so it stops.
    if ! timed "pip download (checkov)" \
        "$PYTHON" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
        ${plat[@]+"${plat[@]}"} -d "$dir" -r "$dir/checkov-requirements.txt"; then
        [ -z "${TARGET:-}" ] \
            || die "a checkov pin has no wheel for $TARGET (above): build $dir/ on such a machine"
        echo "wheelhouse: a checkov pin has no wheel (above): pip wheel builds it" >&2
        timed "pip wheel (checkov)" \
            "$PYTHON" -m pip wheel --disable-pip-version-check --no-deps \
            -w "$dir" -r "$dir/checkov-requirements.txt"
    fi
    (cd "$dir" && sha256 -- *.whl >SHA256SUMS)
    echo "wheelhouse: $(find "$dir" -maxdepth 1 -name '*.whl' | wc -l) checkov wheels, $(du -sh "$dir" | cut -f1) in $dir/"
}

# A wheelhouse of this checkout: built from its lock, and its checkov requirements.
verify_lock() {
    [ -f "$1/requirements.lock" ] || die "$1/ is not a wheelhouse (no requirements.lock)"
    cmp -s "$1/requirements.lock" "$LOCK" \
        || die "$1/ was built from another requirements.lock: build it again"
}
verify_checkov() {
    [ -f "$1/checkov/checkov-requirements.txt" ] \
        || die "$1/ has no checkov/ folder: run \`scripts/wheelhouse.sh build-checkov $1\` online"
    cmp -s "$1/checkov/checkov-requirements.txt" "$CHECKOV_REQUIREMENTS" \
        || die "$1/checkov/ was built from another $CHECKOV_REQUIREMENTS: build it again"
}

# Only the wheelhouse: no pip.conf (a classroom machine may name a mirror or a find-links
# folder), no uv.toml, no index, no network.
offline_env() {
    export PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
    unset PIP_FIND_LINKS UV_FIND_LINKS  # --no-index alone does not turn these off
    export UV_NO_CONFIG=1 UV_OFFLINE=1
}

install() {
    local dir=${1:-wheelhouse} venv=${2:-.venv}
    verify_lock "$dir"
    verify_checkov "$dir"  # before the long part, not after it
    dir=$(cd "$dir" && pwd)
    offline_env
    test -x "$venv/bin/python" || timed "python -m venv" "$PYTHON" -m venv "$venv"
    timed "pip install uv==$UV_VERSION" \
        "$venv/bin/python" -m pip install --quiet --no-index --find-links "$dir" "uv==$UV_VERSION"
    timed "uv pip sync requirements.lock" \
        "$venv/bin/uv" pip sync --quiet --offline --no-index --find-links "$dir" \
        --compile-bytecode --python "$venv/bin/python" "$LOCK"
    timed "uv pip install -e ." \
        "$venv/bin/uv" pip install --quiet --offline --no-index --find-links "$dir" --no-deps \
        --python "$venv/bin/python" -e .
    timed "ipykernel install --name python3" \
        "$venv/bin/python" -m ipykernel install --sys-prefix --name python3
    # what `make setup` leaves behind, so that `make lab`/`make pipeline` do not sync again
    touch "$venv/.synced"
    echo "wheelhouse: $venv/ ready ($(du -sh "$venv" | cut -f1))"
    install_checkov "$dir" .venv-checkov "$venv"
}

# ENV (.venv-checkov: lint.TOOL_ENV) from DIR/checkov/ alone. VENV's ensure_checkov() makes it
# as on chapter 4's first lint: `python -m venv`, then `uv pip install -r` with the uv beside
# VENV's python (pip where there is none), and writes its marker, the requirements' sha256, so
# that the lint later takes the environment as it is. Its uv and pip calls take no index or
# find-links options, so the environment steers them: UV_OFFLINE (this uv has no UV_NO_INDEX;
# offline it asks no index) and UV_FIND_LINKS; PIP_NO_INDEX and PIP_FIND_LINKS.
# UV_COMPILE_BYTECODE: the first checkov run does not compile it all.
install_checkov() {
    local dir=${1:-wheelhouse} env_dir=${2:-.venv-checkov} venv=${3:-.venv} links
    verify_checkov "$dir"
    test -x "$venv/bin/python" || die "$venv/ has no python: run \`scripts/wheelhouse.sh install\`"
    links=$(cd "$dir/checkov" && pwd)
    offline_env
    timed "ensure_checkov ($env_dir)" \
        env UV_FIND_LINKS="$links" PIP_FIND_LINKS="$links" UV_COMPILE_BYTECODE=1 \
        "$venv/bin/python" -c 'import sys, pathlib, hdb_mlops.cloud.lint as lint
lint.ensure_checkov(pathlib.Path(sys.argv[1]))' "$env_dir"
    echo "wheelhouse: $env_dir/ ready ($(du -sh "$env_dir" | cut -f1))"
}

# ENV/bin/checkov --version, offline as lint.OFFLINE_ENV runs it: the pinned version or a stop.
checkov_version() {
    local want got
    want=$(sed -n 's/^checkov==//p' "$CHECKOV_REQUIREMENTS")
    got=$(env BC_SKIP_MAPPING=TRUE CKV_SKIP_PACKAGE_UPDATE_CHECK=true "$1/bin/checkov" --version)
    [ "$got" = "$want" ] || die "$1/bin/checkov --version printed '$got', not $want"
    echo "checkov $got"
}

check() {
    local venv=${1:-.venv} env_dir=${2:-.venv-checkov} runs; runs=$(mktemp -d)
    timed "import hdb_mlops, xgboost, ..." \
        "$venv/bin/python" -c "import hdb_mlops, xgboost, mlflow, fastapi"
    timed "pipeline run --only 05a" \
        "$venv/bin/hdb-mlops" pipeline run --profile quick --only 05a --runs-dir "$runs"
    rm -rf "$runs"
    # ensure_checkov() would make ENV again (from PyPI) unless its marker holds the sha256 of
    # this checkout's checkov requirements
    [ "$(cat "$env_dir/$CHECKOV_MARKER" 2>/dev/null)" \
        = "$(sha256 "$CHECKOV_REQUIREMENTS" | cut -d' ' -f1)" ] \
        || die "$env_dir/ is missing or out of date: run \`scripts/wheelhouse.sh install-checkov\`"
    timed "checkov --version" checkov_version "$env_dir"
}

cmd=${1:-}; shift || true
case "$cmd" in
    build|install|check) "$cmd" "$@" ;;
    build-checkov|install-checkov) "${cmd/-/_}" "$@" ;;
    *) sed -n '2,/^set -e/{/^#/p;}' "$0" | sed 's/^# \{0,1\}//'; [ -n "$cmd" ] && exit 2 || exit 0 ;;
esac
