#!/bin/bash
# dracut module (installed to /usr/lib/dracut/modules.d/90luksforge-token-clevis/): put luksforge's clevis
# token handler into the initramfs. dracut unlocks LUKS through systemd-cryptsetup (systemd module) or
# cryptsetup (crypt module's cryptroot-ask); both go through libcryptsetup, which asks the token handlers before
# any passphrase prompt, so no Clevis module (clevis-pin-tang, jose, curl) is needed.
# Include it with  add_dracutmodules+=" luksforge-token-clevis "  and boot with rd.neednet=1 and ip=...
# (dracut only starts the network in the initramfs when asked to). See token-plugin/README.md.

token_dir() {
    cryptsetup --help 2>/dev/null | sed -n 's/^LUKS2 external token plugin path: \(.*\)\.$/\1/p'
}

check() {
    local dir
    dir="$(token_dir)"
    [[ -n $dir && -e $dir/libcryptsetup-token-clevis.so ]] || return 1
    require_binaries cryptsetup || return 1
    return 255  # only when asked for
}

depends() {
    echo crypt network
    return 0
}

cmdline() {
    echo "rd.neednet=1"
}

install() {
    local dir
    dir="$(token_dir)"
    # inst_library copies the handler and, through ldd, every library it loads (libcurl and its
    # dependencies, libjose, jansson, libcrypto, libstdc++, libgcc_s).
    inst_library "$dir/libcryptsetup-token-clevis.so"
    # Host names of Tang servers resolve through /etc/hosts or DNS from the network module.
    [[ $hostonly ]] && inst_simple /etc/hosts
    return 0
}
