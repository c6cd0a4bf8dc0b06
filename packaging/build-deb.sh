#!/bin/sh
# Build the sshidle Debian package from binaries already built by cargo, with
# dpkg-deb only (no debhelper, no cargo-deb).
#
# usage: packaging/build-deb.sh [BIN_DIR [OUT_DIR]]
#   BIN_DIR  holds sshidlectl and libpam_sshidle.so   (default: target/release)
#   OUT_DIR  where the .deb is written                 (default: target/debian)
# Prints the path of the .deb on its last line.
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=${1:-$top/target/release}
out_dir=${2:-$top/target/debian}
version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$top/Cargo.toml" | head -n 1)
arch=$(dpkg --print-architecture)
case "$arch" in
    amd64) multiarch=x86_64-linux-gnu ;;
    arm64) multiarch=aarch64-linux-gnu ;;
    i386) multiarch=i386-linux-gnu ;;
    armhf) multiarch=arm-linux-gnueabihf ;;
    ppc64el) multiarch=powerpc64le-linux-gnu ;;
    riscv64) multiarch=riscv64-linux-gnu ;;
    s390x) multiarch=s390x-linux-gnu ;;
    *) echo "build-deb.sh: unknown architecture $arch" >&2; exit 1 ;;
esac

for f in sshidlectl libpam_sshidle.so; do
    [ -f "$bin_dir/$f" ] || { echo "build-deb.sh: no $bin_dir/$f; run cargo build --release first" >&2; exit 1; }
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT INT TERM
root=$stage/sshidle
umask 022
mkdir -p "$root/DEBIAN"

install -D -m 0644 "$bin_dir/libpam_sshidle.so" "$root/lib/$multiarch/security/pam_sshidle.so"
install -D -m 0755 "$bin_dir/sshidlectl" "$root/usr/sbin/sshidlectl"
if command -v strip >/dev/null 2>&1; then
    strip --strip-unneeded "$root/lib/$multiarch/security/pam_sshidle.so" "$root/usr/sbin/sshidlectl"
fi
install -D -m 0644 "$top/packaging/sshidle.conf" "$root/etc/security/sshidle.conf"
install -D -m 0755 "$top/packaging/sshidle.init" "$root/etc/init.d/sshidle"
install -D -m 0644 "$top/packaging/sshidle.service" "$root/lib/systemd/system/sshidle.service"
for page in pam_sshidle.8 sshidlectl.8 sshidle.conf.5; do
    section=${page##*.}
    install -D -m 0644 "$top/man/$page" "$root/usr/share/man/man$section/$page"
    gzip -9n "$root/usr/share/man/man$section/$page"
done
mkdir -p "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d"
"$bin_dir/sshidlectl" completions bash >"$root/usr/share/bash-completion/completions/sshidlectl"
"$bin_dir/sshidlectl" completions zsh >"$root/usr/share/zsh/vendor-completions/_sshidlectl"
"$bin_dir/sshidlectl" completions fish >"$root/usr/share/fish/vendor_completions.d/sshidlectl.fish"
install -D -m 0644 "$top/packaging/debian/copyright" "$root/usr/share/doc/sshidle/copyright"
install -D -m 0644 "$top/README.md" "$root/usr/share/doc/sshidle/README.md"
gzip -9n "$root/usr/share/doc/sshidle/README.md"

for script in postinst prerm postrm; do
    install -m 0755 "$top/packaging/debian/$script" "$root/DEBIAN/$script"
done
printf '%s\n' /etc/security/sshidle.conf /etc/init.d/sshidle >"$root/DEBIAN/conffiles"

# The newest glibc symbol version the binaries use.
glibc=2.34
if command -v objdump >/dev/null 2>&1; then
    found=$(objdump -T "$root/usr/sbin/sshidlectl" "$root/lib/$multiarch/security/pam_sshidle.so" \
        | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
    [ -n "$found" ] && glibc=$found
fi
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: sshidle
Version: $version
Architecture: $arch
Maintainer: sshidle developers <root@localhost>
Installed-Size: $size
Depends: libc6 (>= $glibc), libpam0g (>= 1.1), libpam-runtime
Recommends: openssh-server
Section: admin
Priority: optional
Description: disconnect idle SSH sessions, per user and per group
 sshidle ends SSH sessions that have been idle, or open, for longer than a
 per-user or per-group policy allows, warning the user on the terminal first.
 ClientAliveInterval only drops unresponsive clients; sshidle drops idle
 users too.
 .
 This package contains the PAM session module pam_sshidle.so, which records
 every SSH login and its limits, the controller sshidlectl, which enforces
 them (the sshidle service) and manages sshd's keepalive settings, a default
 policy in /etc/security/sshidle.conf, and the man pages. Installing it adds
 "session optional pam_sshidle.so" to /etc/pam.d/sshd; removing it takes the
 line out again.
CONTROL
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | sort | xargs md5sum) \
    >"$root/DEBIAN/md5sums"

mkdir -p "$out_dir"
deb="$out_dir/sshidle_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
