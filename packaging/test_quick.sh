#!/usr/bin/env bash
# The packaging checks that need no package build (seconds; ctest packaging_quick, always on): the RPM spec
# parses (rpmspec -P) and rpmlint finds no error in it, Debian's build dependencies are all installed here
# (dpkg-checkbuilddeps: what tools/deps.sh installs covers debian/control) and debian/ makes the five packages.
# packaging/test_rpm.sh and test_deb.sh (LUKSFORGE_PACKAGING=1) build, lint, install and check the packages.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
spec=$top/packaging/rpm/luksforge.spec
echo "== rpmspec -P"
rpmspec -P "$spec" >/dev/null
echo "== rpmlint (spec; filters for the built RPMs go unused here, so that error alone is ignored)"
log=$(rpmlint -r "$top/packaging/rpm/luksforge.rpmlintrc" "$spec" 2>&1 || true)
errors=$(grep -E ': E: ' <<<"$log" | grep -v ': E: unused-rpmlintrc-filter' || true)
grep -E ': [EW]: ' <<<"$log" | grep -v unused-rpmlintrc-filter || true
[[ -z $errors ]] || { echo "rpmlint errors in the spec"; exit 1; }
echo "== dpkg-checkbuilddeps"
(cd "$top" && dpkg-checkbuilddeps)
echo "== dh_listpackages"
names=$(cd "$top" && dh_listpackages | sort | tr '\n' ' ')
[[ $names == "libluksforge-dev libluksforge0 luksforge luksforge-lorax-templates python3-luksforge " ]] ||
  { echo "unexpected Debian packages: $names"; exit 1; }
echo "packaging_quick: 1 passed, 0 failed"
