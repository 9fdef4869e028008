#!/usr/bin/env bash
# Checks packaging/rpm/luksforge.spec on this Debian machine: rpmspec -P parses it, rpmlint reports no errors
# (spec and built RPMs), rpmbuild -bb --nodeps builds it (Fedora's BuildRequires have Debian names here), and
# `rpm -i --root DIR --nodeps` installs every file of every subpackage where the RPM says, with the layout the
# spec promises (templates under /usr/share/luksforge/lorax-templates, the module in python3_sitearch).
# Usage: packaging/test_rpm.sh [WORK_DIR]   (run by ctest as packaging_rpm when LUKSFORGE_PACKAGING=1)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(realpath -m "${1:-$top/build/packaging-rpm}")
spec=$top/packaging/rpm/luksforge.spec
version=$(sed -n 's/^Version: *//p' "$spec")
step() { echo "== $*"; }

rm -rf "$work" && mkdir -p "$work"/{SOURCES,root,src/luksforge-"$version"}
step "rpmspec -P"
rpmspec -P "$spec" >/dev/null
step "rpmlint (spec)"
rpmlint -r "$top/packaging/rpm/luksforge.rpmlintrc" "$spec"
step "source tarball of this tree (tracked and new files)"
(cd "$top" && git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work/src/luksforge-$version")
tar -C "$work/src" -czf "$work/SOURCES/luksforge-$version.tar.gz" "luksforge-$version"
step "rpmbuild -bb --nodeps"
rpmbuild -bb --nodeps --define "_topdir $work" ${LUKSFORGE_CMAKE_ARGS:+--define "luksforge_cmake_args $LUKSFORGE_CMAKE_ARGS"} \
  "$spec" > "$work/build.log" 2>&1 || { tail -n 60 "$work/build.log"; exit 1; }
mapfile -t rpms < <(find "$work/RPMS" -name '*.rpm' | sort)
names=$(for r in "${rpms[@]}"; do rpm -qp --qf '%{NAME}\n' "$r"; done | sort | tr '\n' ' ')
[[ $names == "luksforge luksforge-debuginfo luksforge-debugsource luksforge-devel luksforge-libs luksforge-libs-debuginfo luksforge-lorax python3-luksforge python3-luksforge-debuginfo " ||
   $names == "luksforge luksforge-devel luksforge-libs luksforge-lorax python3-luksforge " ]] ||
  { echo "unexpected subpackages: $names"; exit 1; }
step "rpmlint (RPMs: errors fail)"
main_rpms=()
for r in "${rpms[@]}"; do [[ $r == *debug* ]] || main_rpms+=("$r"); done
rpmlint -r "$top/packaging/rpm/luksforge.rpmlintrc" "${main_rpms[@]}" | tee "$work/rpmlint.log" | tail -n 1
step "rpm -i --root DIR --nodeps"
rpm -i --root "$work/root" --nodeps "${main_rpms[@]}"
missing=0
for r in "${main_rpms[@]}"; do
  while read -r f; do
    [[ -e $work/root$f || -L $work/root$f ]] || { echo "missing: $f ($(basename "$r"))"; missing=1; }
  done < <(rpm -qlp "$r")
done
((missing == 0))
sitearch=$(rpmspec -E '%{python3_sitearch}' "$spec" 2>/dev/null || rpm --eval '%{python3_sitearch}')
for f in /usr/bin/luksforge /usr/include/luksforge/luks.hpp /usr/lib64/pkgconfig/luksforge.pc \
         /usr/lib64/cmake/luksforge/luksforgeConfig.cmake /usr/lib64/libluksforge.so.0 \
         /usr/share/luksforge/lorax-templates/luksforge-runtime.tmpl \
         /usr/share/luksforge/lorax-templates/kickstarts/lmc-make-disk.ks "$sitearch/luksforge/lorax.py"; do
  [[ -e $work/root$f ]] || { echo "not installed: $f"; exit 1; }
done
test -x "$work/root/usr/share/luksforge/lorax-templates/lmc-postbuild.py"
ls "$work/root$sitearch"/luksforge/_luksforge*.so >/dev/null
rpm -qa --root "$work/root" | sort
echo "packaging_rpm: 1 passed, 0 failed"
