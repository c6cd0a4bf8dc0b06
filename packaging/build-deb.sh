#!/bin/sh
# Build the sshidle Debian package with Debian's own tooling (dpkg-buildpackage,
# debhelper), from a copy of the source tree so that nothing is written outside
# the work tree: dpkg-buildpackage puts its results in the parent directory.
#
# usage: packaging/build-deb.sh [OUT_DIR]
#   OUT_DIR  where the .deb (and .buildinfo, .changes) end up (default: target/debian)
# Prints the path of the .deb on its last line.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
out_dir=${1:-$top/target/debian}
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)
version=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
arch=$(dpkg --print-architecture)

# A stable place for the copy, so that cargo's incremental builds (in their
# own target directory beside it) are reused from one run to the next.
work=$out_dir/build
src=$work/sshidle-$version
rm -rf "$src"
mkdir -p "$src"
(cd "$top" && tar -c --exclude=./target --exclude=./.git .) | (cd "$src" && tar -x)

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$work/cargo-target}"
(cd "$src" && dpkg-buildpackage --build=binary --no-sign) >"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log" >&2
    echo "build-deb.sh: dpkg-buildpackage failed; the whole log is $work/build.log" >&2
    exit 1
}
# The package, its debug symbols (sshidle-dbgsym), .buildinfo and .changes.
for f in "$work"/sshidle*_"$version"_"$arch".*; do
    mv -f "$f" "$out_dir/"
done
echo "$out_dir/sshidle_${version}_${arch}.deb"
