#!/usr/bin/env bash
# Builds swift-mesh_VERSION_ARCH.deb: meshd, sidecar and meshctl with their systemd units, man
# pages and the users mesh (sidecars) and meshd (docs/packaging.md).
#
#   packaging/build-deb.sh [--out DIR] [--bin-dir DIR] [--xz-level N]
#
# --bin-dir DIR  take meshd, sidecar and meshctl from DIR (e.g. .build/debug) instead of building
#                them with `swift build -c release --static-swift-stdlib`. Binaries that link the
#                Swift runtime dynamically (a debug build) get it bundled in /usr/lib/swift-mesh
#                and their RUNPATH pointed there, so the package still needs no toolchain.
# --out DIR      where the .deb goes (default .build/deb); its path is the last line printed.
# --xz-level N   xz compression level, 0 to 9 (default 6, dpkg's); the tests use 1 (seconds
#                instead of half a minute, the file a third larger).
#
# VERSION is packaging/VERSION, plus +git<short commit> in a git checkout, plus the Debian
# revision -1. Depends are computed from what the binaries link (dpkg-shlibdeps, or objdump and
# dpkg -S when dpkg-dev is missing), plus iptables, iproute2 (capture) and adduser (postinst).
# Needs: dpkg-deb, strip/objdump (binutils), chrpath, python3, gzip.
set -euo pipefail

fail() { echo "build-deb: error: $*" >&2; exit 1; }
note() { echo "build-deb: $*" >&2; }

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out="$repo/.build/deb"
bin_dir=""
xz_level=6
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || fail "--out needs a directory"; out=$2; shift 2 ;;
        --bin-dir) [ $# -ge 2 ] || fail "--bin-dir needs a directory"; bin_dir=$2; shift 2 ;;
        --xz-level) [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]$ ]] || fail "--xz-level needs a level from 0 to 9"; xz_level=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) fail "unknown argument $1 (see --help)" ;;
    esac
done

for tool in dpkg-deb strip objdump chrpath python3 gzip; do
    command -v "$tool" >/dev/null || fail "$tool not found (Debian packages: dpkg, binutils, chrpath, python3, gzip)"
done

# --- version -------------------------------------------------------------------------------
upstream=$(tr -d ' \n' < "$here/VERSION")
[[ "$upstream" =~ ^[0-9]+(\.[0-9]+)*$ ]] || fail "packaging/VERSION: expected a version such as 0.18.0, got \"$upstream\""
commit_epoch=""
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    upstream="$upstream+git$(git -C "$repo" rev-parse --short HEAD)"
    commit_epoch=$(git -C "$repo" log -1 --format=%ct)
fi
version="$upstream-1"
# Reproducible dates (man pages, changelog, file times): the commit's, unless given
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-${commit_epoch:-$(date +%s)}}
date_short=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
date_rfc=$(date -u -R -d "@$SOURCE_DATE_EPOCH")

# --- binaries ------------------------------------------------------------------------------
if [ -z "$bin_dir" ]; then
    note "building release binaries (swift build -c release --static-swift-stdlib)"
    (cd "$repo" && swift build -c release --static-swift-stdlib --product meshd \
        && swift build -c release --static-swift-stdlib --product sidecar \
        && swift build -c release --static-swift-stdlib --product meshctl) >&2
    bin_dir=$(cd "$repo" && swift build -c release --show-bin-path)
fi
[ -d "$bin_dir" ] || fail "--bin-dir $bin_dir: not a directory"
bin_dir=$(cd "$bin_dir" && pwd)
for b in meshd sidecar meshctl; do
    [ -x "$bin_dir/$b" ] || fail "--bin-dir $bin_dir: no executable $b"
done
arch=$(objdump -f "$bin_dir/meshd" | sed -n 's/^architecture: \([^,]*\),.*/\1/p')
case "$arch" in
    i386:x86-64) arch=amd64 ;;
    aarch64) arch=arm64 ;;
    *) fail "$bin_dir/meshd: architecture \"$arch\" is not one this script knows (amd64, arm64)" ;;
esac

# --- staging tree --------------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# dpkg-shlibdeps recognises libraries of the package being built under debian/PACKAGE
root="$work/debian/swift-mesh"
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
    "$root/etc/mesh/sidecar" "$root/usr/share/man/man1" "$root/usr/share/doc/swift-mesh/examples" \
    "$root/usr/share/lintian/overrides"

for b in meshd sidecar meshctl; do
    install -m 0755 "$bin_dir/$b" "$root/usr/bin/$b"
done

# A Swift runtime linked dynamically (debug builds): bundle the libraries the binaries load
# from outside the system's directories, and point the binaries' RUNPATH at them.
private_lib=/usr/lib/swift-mesh
toolchain_libs=$(for b in meshd sidecar meshctl; do ldd "$bin_dir/$b"; done \
    | awk '$2 == "=>" && $3 ~ /^\// {print $3}' \
    | grep -v -E '^/(usr/)?lib(32|64|x32)?/' | sort -u || true)
for b in meshd sidecar meshctl; do
    if ldd "$bin_dir/$b" | grep -q 'not found'; then
        fail "$bin_dir/$b: a library it needs is not found: $(ldd "$bin_dir/$b" | grep 'not found' | head -1 | xargs)"
    fi
done
if [ -n "$toolchain_libs" ]; then
    note "the binaries link the Swift runtime dynamically (not a --static-swift-stdlib build): bundling $(echo "$toolchain_libs" | wc -l) libraries in $private_lib"
    install -d -m 0755 "$root$private_lib"
    for lib in $toolchain_libs; do
        install -m 0644 "$lib" "$root$private_lib/"
        strip --remove-section=.comment --remove-section=.note --strip-unneeded "$root$private_lib/$(basename "$lib")"
        # their own RUNPATH ($ORIGIN) finds each other in the same directory
    done
    for b in meshd sidecar meshctl; do
        chrpath -r "$private_lib" "$root/usr/bin/$b" >/dev/null
    done
else
    # a RUNPATH of $ORIGIN (swiftc's default) would search /usr/bin for libraries
    for b in meshd sidecar meshctl; do
        if chrpath -l "$root/usr/bin/$b" >/dev/null 2>&1; then chrpath -d "$root/usr/bin/$b" >/dev/null; fi
    done
fi
for b in meshd sidecar meshctl; do
    strip --remove-section=.comment --remove-section=.note "$root/usr/bin/$b"
done

# systemd units, configuration (conffiles), examples
install -m 0644 "$here/systemd/meshd.service" "$here/systemd/mesh-sidecar@.service" "$root/lib/systemd/system/"
install -m 0644 "$here/etc/meshd.env" "$root/etc/mesh/meshd.env"
install -m 0644 "$here/etc/sidecar/example.env.sample" "$root/etc/mesh/sidecar/example.env.sample"
install -m 0644 "$here/examples/no-capture.conf" "$root/usr/share/doc/swift-mesh/examples/"

# man pages from each binary's --help (the binaries as built, before strip: the same text)
see_also() { for p in meshd sidecar meshctl; do [ "$p" = "$1" ] || printf -- '--see-also\n%s(1)\n' "$p"; done; }
for b in meshd sidecar meshctl; do
    sub=(); [ "$b" = meshctl ] && sub=(--subcommand capture)
    mapfile -t also < <(see_also "$b")
    python3 "$here/gen-manpage.py" --binary "$bin_dir/$b" --name "$b" --version "$upstream" \
        --date "$date_short" "${sub[@]}" "${also[@]}" -o "$root/usr/share/man/man1/$b.1"
    gzip -9n "$root/usr/share/man/man1/$b.1"
done

# documentation: copyright, changelog, the packaging guide
install -m 0644 "$here/debian/copyright" "$root/usr/share/doc/swift-mesh/copyright"
maintainer=$(sed -n 's/^Maintainer: //p' "$here/debian/control.in")
{
    echo "swift-mesh ($version) bookworm; urgency=medium"
    echo
    echo "  * Built by packaging/build-deb.sh from $(git -C "$repo" rev-parse --short HEAD 2>/dev/null | sed 's/^/commit /' || true)$(git -C "$repo" rev-parse HEAD >/dev/null 2>&1 || echo "a source tree outside git")."
    echo
    echo " -- $maintainer  $date_rfc"
} > "$root/usr/share/doc/swift-mesh/changelog.Debian"
gzip -9n "$root/usr/share/doc/swift-mesh/changelog.Debian"
install -m 0644 "$repo/docs/packaging.md" "$root/usr/share/doc/swift-mesh/README.Debian"
gzip -9n "$root/usr/share/doc/swift-mesh/README.Debian"
install -m 0644 "$here/debian/lintian-overrides" "$root/usr/share/lintian/overrides/swift-mesh"

# --- control -------------------------------------------------------------------------------
install -m 0755 "$here/debian/postinst" "$here/debian/prerm" "$here/debian/postrm" "$root/DEBIAN/"
install -m 0644 "$here/debian/conffiles" "$root/DEBIAN/conffiles"

elf_files=("$root/usr/bin/meshd" "$root/usr/bin/sidecar" "$root/usr/bin/meshctl")
[ -d "$root$private_lib" ] && elf_files+=("$root$private_lib"/*.so*)
if command -v dpkg-shlibdeps >/dev/null; then
    install -d "$work/debian"
    printf 'Source: swift-mesh\n\nPackage: swift-mesh\nArchitecture: any\n' > "$work/debian/control"
    libdir_arg=(); [ -d "$root$private_lib" ] && libdir_arg=(-l"$root$private_lib")
    shlibs=$(cd "$work" && dpkg-shlibdeps -O "${libdir_arg[@]}" "${elf_files[@]}" 2>"$work/shlibdeps.err") \
        || fail "dpkg-shlibdeps: $(cat "$work/shlibdeps.err")"
    if [ -s "$work/shlibdeps.err" ]; then sed 's/^/build-deb: /' "$work/shlibdeps.err" >&2; fi
    lib_depends=$(echo "$shlibs" | sed -n 's/^shlibs:Depends=//p')
else
    # Without dpkg-dev: each library the binaries need, by soname, to the package that ships it
    # and its installed upstream version as the minimum.
    note "dpkg-shlibdeps not found (dpkg-dev): Depends from objdump and dpkg -S"
    lib_depends=$(for f in "${elf_files[@]}"; do objdump -p "$f" | awk '$1 == "NEEDED" {print $2}'; done | sort -u \
        | while read -r soname; do
            [ -e "$root$private_lib/$soname" ] && continue
            path=$(ldconfig -p | awk -v s="$soname" '$1 == s && /x86-64|AArch64/ {print $NF; exit}')
            [ -n "$path" ] || { echo "build-deb: error: $soname: not in the linker cache" >&2; exit 1; }
            # usrmerge: dpkg knows a file by the path its package ships, with or without /usr
            real=$(readlink -f "$path")
            pkg=""
            for cand in "$path" "$real" "${real#/usr}" "/usr$path"; do
                pkg=$(dpkg -S "$cand" 2>/dev/null | head -1 | cut -d: -f1) && [ -n "$pkg" ] && break
            done
            [ -n "$pkg" ] || { echo "build-deb: error: $path: no package owns it" >&2; exit 1; }
            ver=$(dpkg-query -W -f='${Version}' "$pkg" | sed 's/-[^-]*$//')
            echo "$pkg (>= $ver)"
        done | sort -u | paste -sd, | sed 's/,/, /g') || fail "could not compute the library dependencies"
fi
[ -n "$lib_depends" ] || fail "no library dependency found for the binaries (expected libc6, libssl3, libnghttp2-14)"
depends="$lib_depends, iptables, iproute2, adduser"
installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$installed_size/" \
    -e "s/@DEPENDS@/$depends/" "$here/debian/control.in" > "$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

# modes as dpkg-deb stores them; times from SOURCE_DATE_EPOCH
find "$root" -type d -exec chmod 0755 {} +
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb="$(cd "$out" && pwd)/swift-mesh_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz -z"$xz_level" --build "$root" "$deb" >/dev/null
note "Depends: $depends"
echo "$deb"
