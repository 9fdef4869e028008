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
step "rpmlint (spec and RPMs in one run, so unused filters show too: errors fail)"
main_rpms=()
for r in "${rpms[@]}"; do [[ $r == *debug* ]] || main_rpms+=("$r"); done
rpmlint -r "$top/packaging/rpm/luksforge.rpmlintrc" "$spec" "${main_rpms[@]}" > "$work/rpmlint.log" 2>&1 ||
  { grep -E ': [EW]: ' "$work/rpmlint.log"; tail -n 1 "$work/rpmlint.log"; exit 1; }
grep -E ': W: ' "$work/rpmlint.log" | sed 's/^[^:]*: //' | sort | uniq -c || true
tail -n 1 "$work/rpmlint.log"

step "rpm -i --root DIR --nodeps"
rpm -i --root "$work/root" --nodeps "${main_rpms[@]}"
missing=0
for r in "${main_rpms[@]}"; do
  while read -r f; do
    [[ -e $work/root$f || -L $work/root$f ]] || { echo "missing: $f ($(basename "$r"))"; missing=1; }
  done < <(rpm -qlp "$r")
done
((missing == 0))

step "every %files entry of the spec is installed, owned by its subpackage"
# The spec as rpm expands it; each "%files [-n NAME | SUB]" section lists paths (globs, directories) and
# %dir/%doc/%license lines. %doc/%license name source files (they land in %_docdir) and are checked by rpm.
rpmspec -P "$spec" > "$work/spec.expanded"
base=$(sed -n 's/^Name: *//p' "$work/spec.expanded" | head -n1)
checked=0
while IFS=$'\t' read -r pkg entry; do
  shopt -s nullglob
  matches=("$work/root"$entry)
  shopt -u nullglob
  ((${#matches[@]} > 0)) || { echo "%files $pkg: nothing installed at $entry"; missing=1; continue; }
  for m in "${matches[@]}"; do
    owner=$(rpm -q --root "$work/root" --qf '%{NAME}\n' -f "${m#"$work/root"}" 2>&1 | sort -u | tr '\n' ' ')
    [[ $owner == "$pkg " ]] || { echo "%files $pkg: ${m#"$work/root"} is owned by: $owner"; missing=1; }
    if [[ $entry == */ ]]; then   # a whole directory: it must hold files, all of them this package's
      mapfile -t inside < <(find "$m" -type f -printf "/%P\n" | sed "s|^/|${m#"$work/root"}|")
      ((${#inside[@]} > 0)) || { echo "%files $pkg: empty directory $entry"; missing=1; continue; }
      others=$(rpm -q --root "$work/root" --qf '%{NAME}\n' -f "${inside[@]}" 2>&1 | grep -vx "$pkg" | sort -u || true)
      [[ -z $others ]] || { echo "%files $pkg: files under $entry owned by: $others"; missing=1; }
    fi
  done
  checked=$((checked + 1))
done < <(awk -v base="$base" '
  /^%files/ { pkg = base; insec = 1
              if ($2 == "-n") pkg = $3; else if ($2 != "" && $2 !~ /^-/) pkg = base "-" $2; next }
  /^%(changelog|package|description|prep|build|install|check|pre|post|preun|postun|trigger)/ { insec = 0 }
  insec && NF && $1 !~ /^%(doc|license)$/ && $1 !~ /^#/ {
    path = ($1 == "%dir" || $1 ~ /^%(attr|config|verify)/) ? $NF : $1
    print pkg "\t" path }' "$work/spec.expanded")
((missing == 0 && checked > 0)) || { echo "spec %files check failed (entries checked: $checked)"; exit 1; }
echo "$checked %files entries installed and owned by their subpackages"
step "the layout the spec promises"
# python3_sitearch as the spec expanded it: its python3-luksforge %files entry is <sitearch>/luksforge/.
sitearch=$(awk '/^%files -n python3-/ { f = 1; next } f && /^\// { sub("/luksforge/?$", ""); print; exit }' \
  "$work/spec.expanded")
[[ $sitearch == /usr/lib*/python3*/site-packages ]] || { echo "unexpected python3_sitearch: $sitearch"; exit 1; }
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
