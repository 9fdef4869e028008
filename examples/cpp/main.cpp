// luksforge-fleet-check: a small tool a build pipeline could ship, written against the installed luksforge.
//
//   luksforge-fleet-check format IMAGE PASSPHRASE_FILE   create a 32 MiB LUKS2 demo image with one keyslot
//   luksforge-fleet-check check IMAGE...                  one line per image; exit 3 when two share a volume key
//
// "check" finds the LUKS2 volume in each image (bare LUKS file or the one LUKS2 partition of a GPT/MBR disk)
// and compares volume-key fingerprints: clones of one image share a key, which NBDE images must not.
#include <luksforge/error.hpp>
#include <luksforge/image.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/secret.hpp>

#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace {

int format_demo(const std::string& image, const std::string& passphrase_file) {
    luksforge::SecretBuffer passphrase = luksforge::read_secret_file(passphrase_file);
    luksforge::Volume::ensure_file_size(image, 32u << 20);
    luksforge::FormatOptions options;
    options.label = "fleet-check-demo";
    luksforge::Volume volume = luksforge::Volume::format(image, options);
    // Right after format the volume key is still in memory: no PBKDF run for the first keyslot. pbkdf2 with
    // 1000 iterations keeps the demo instant; real images get their keyslots from Clevis bindings.
    const int slot = volume.add_keyslot_by_volume_key(passphrase.view(), luksforge::Pbkdf::pbkdf2_fast(1000));
    std::cout << image << ": formatted, keyslot " << slot << ", fingerprint " << volume.fingerprint() << "\n";
    return 0;
}

int check(const std::vector<std::string>& images) {
    std::map<std::string, std::vector<std::string>> by_key;
    for (const std::string& image : images) {
        const luksforge::LuksTarget target = luksforge::select_luks_target(image);
        const luksforge::AttachedTarget attached = luksforge::AttachedTarget::attach(target, /*read_only=*/true);
        const luksforge::Volume volume = luksforge::Volume::open(attached.device(), luksforge::Volume::Access::read_only);
        const luksforge::Inspection info = volume.inspect();
        std::cout << target.describe() << " uuid=" << info.uuid << " fingerprint=" << info.fingerprint
                  << " keyslots=" << info.keyslots.size() << " tokens=" << info.tokens.size() << "\n";
        by_key[info.fingerprint].push_back(target.describe());
    }
    int shared = 0;
    for (const auto& [fingerprint, members] : by_key) {
        if (members.size() < 2) continue;
        ++shared;
        std::cout << "SHARED volume key " << fingerprint.substr(0, 16) << "…:";
        for (const auto& m : members) std::cout << " " << m;
        std::cout << "\n";
    }
    return shared ? 3 : 0;
}

}  // namespace

int main(int argc, char** argv) {
    const std::vector<std::string> args(argv + 1, argv + argc);
    try {
        if (args.size() == 3 && args[0] == "format") return format_demo(args[1], args[2]);
        if (args.size() >= 2 && args[0] == "check") return check({args.begin() + 1, args.end()});
        std::cerr << "usage: luksforge-fleet-check format IMAGE PASSPHRASE_FILE | check IMAGE...\n";
        return 2;
    } catch (const luksforge::Error& e) {
        // Each luksforge exception carries an errno-style code and a one-line message.
        std::cerr << "luksforge-fleet-check: " << e.what() << " (errno " << e.code().value() << ")\n";
        return 1;
    }
}
