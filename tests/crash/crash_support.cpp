#include "crash_support.hpp"

#include "dmcrypt_reference.hpp"

#include <luksforge/luks.hpp>

#include <doctest/doctest.h>

#include <cctype>
#include <cstdlib>
#include <fstream>

namespace luksforge::test::crash {
namespace fs = std::filesystem;

KnownImage make_known_image(const fs::path& dir, const std::string& name, const std::string& passphrase) {
    KnownImage out;
    out.image = dir / name;
    out.passphrase = passphrase;
    out.passphrase_file = dir / (name + ".pass");
    write_file(out.passphrase_file, passphrase);
    run_ok({"sh", "-c", "head -c " + std::to_string(kDataBytes) + " /dev/urandom > '" + out.image.string() + "'"});
    out.plain_sha256 = sha256_file(out.image);
    run_ok({"truncate", "-s", std::to_string(kDataBytes + 16 * kMiB), out.image.string()});
    // In `dir`: cryptsetup writes a temporary LUKS2-temp-<uuid>.new header into its working directory.
    run_ok({"sh", "-c", "cd \"$0\" && exec cryptsetup reencrypt --encrypt -q --type luks2 --reduce-device-size 16M "
                        "--pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file \"$1\" \"$2\"",
            dir.string(), out.passphrase_file.string(), out.image.string()});
    return out;
}

KnownImage copy_image(const KnownImage& from, const fs::path& to) {
    run_ok({"cp", "--sparse=always", from.image.string(), to.string()});
    KnownImage out = from;
    out.image = to;
    return out;
}

RunResult run_hooked(const std::vector<std::string>& cli_args, const std::map<std::string, std::string>& env) {
    std::vector<std::string> argv{"env", std::string("LD_PRELOAD=") + LUKSFORGE_KILL_HOOK};
    // In the sanitizer build the hook is preloaded ahead of the ASan runtime, which ASan refuses by default.
    const char* asan = std::getenv("ASAN_OPTIONS");
    argv.push_back(std::string("ASAN_OPTIONS=") + (asan ? std::string(asan) + ":" : "") + "verify_asan_link_order=0");
    for (const auto& [key, value] : env) argv.push_back(key + "=" + value);
    argv.emplace_back(LUKSFORGE_CLI);
    argv.insert(argv.end(), cli_args.begin(), cli_args.end());
    return run(argv);
}

std::vector<std::string> record_events(const std::vector<std::string>& cli_args,
                                       const std::map<std::string, std::string>& env) {
    TempDir dir;
    const fs::path log = dir / "events";
    std::map<std::string, std::string> with_log = env;
    with_log["LUKSFORGE_HOOK_LOG"] = log.string();
    const RunResult result = run_hooked(cli_args, with_log);
    REQUIRE_MESSAGE(result.exit_code == 0, "recording run failed: " << result.err);
    std::vector<std::string> events;
    std::ifstream in(log);
    std::size_t number = 0;
    std::string name;
    while (in >> number >> name) events.push_back(name);
    return events;
}

std::size_t event_index(const std::vector<std::string>& events, const std::string& name, std::size_t nth) {
    for (std::size_t i = 0; i < events.size(); ++i)
        if (events[i] == name && --nth == 0) return i + 1;
    return 0;
}

bool luksdump_ok(const fs::path& device) { return run({"cryptsetup", "luksDump", device.string()}).exit_code == 0; }

bool stock_opens(const fs::path& device, const std::string& passphrase, int slot) {
    std::vector<std::string> argv{"cryptsetup", "open", "--test-passphrase", "--key-file", "-", device.string()};
    if (slot >= 0) {
        argv.emplace_back("--key-slot");
        argv.push_back(std::to_string(slot));
    }
    return run(argv, passphrase).exit_code == 0;
}

bool data_intact(const fs::path& device, const std::string& passphrase, const std::string& plain_sha256) {
    Volume volume = Volume::open(device, Volume::Access::read_only);
    const Inspection info = volume.inspect();
    if (!volume.test_passphrase(passphrase)) return false;
    const SecretBuffer key = volume.volume_key(passphrase);
    const std::string cipher = read_file_bytes(device, info.data_offset_bytes, kDataBytes);
    if (cipher.size() != kDataBytes) return false;
    return sha256_hex(decrypt_xts_plain64(cipher, key, info.sector_size)) == plain_sha256;
}

std::string header_json(const fs::path& device) {
    return run_ok({"cryptsetup", "luksDump", "--dump-json-metadata", device.string()});
}

std::vector<int> clevis_slots(const fs::path& image) {
    const RunResult list = run({"clevis", "luks", "list", "-d", image.string()});
    std::vector<int> slots;
    std::size_t pos = 0;
    while (pos < list.out.size()) {
        const std::size_t end = list.out.find('\n', pos);
        const std::string line = list.out.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
        if (!line.empty() && std::isdigit(static_cast<unsigned char>(line[0]))) slots.push_back(std::stoi(line));
        if (end == std::string::npos) break;
        pos = end + 1;
    }
    return slots;
}

std::string clevis_pass(const fs::path& image, int slot) {
    const RunResult pass = run({"clevis", "luks", "pass", "-d", image.string(), "-s", std::to_string(slot)});
    return pass.exit_code == 0 ? pass.out : std::string();
}

std::vector<std::string> working_bindings(const fs::path& image) {
    std::vector<std::string> out;
    for (int slot : clevis_slots(image)) {
        const std::string pass = clevis_pass(image, slot);
        if (!pass.empty() && stock_opens(image, pass, slot)) out.push_back(pass);
    }
    return out;
}

}  // namespace luksforge::test::crash
