// Shared pieces of the crash tests: LUKS2 files holding known data, running the CLI under the kill hook
// (kill_hook.cpp), and the checks every interrupted run must pass.
#pragma once

#include "testutil.hpp"

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace luksforge::test::crash {

constexpr std::uint64_t kMiB = 1ull << 20;
constexpr std::uint64_t kDataBytes = 8 * kMiB;

// A bare LUKS2 file: 16 MiB header area + 8 MiB of random data encrypted under a passphrase keyslot (pbkdf2,
// 1000 iterations), made by stock `cryptsetup reencrypt --encrypt` over the plain data.
struct KnownImage {
    std::filesystem::path image;
    std::filesystem::path passphrase_file;
    std::string passphrase;
    std::string plain_sha256;  // of the kDataBytes of plaintext
};
KnownImage make_known_image(const std::filesystem::path& dir, const std::string& name,
                            const std::string& passphrase = "crash harness passphrase");
// A sparse copy of `from` at `to` (same passphrase and data).
KnownImage copy_image(const KnownImage& from, const std::filesystem::path& to);

// The events (kill points) a CLI run passes, in order: "crypt_keyslot_destroy", "write", "fsync", ...
std::vector<std::string> record_events(const std::vector<std::string>& cli_args,
                                       const std::map<std::string, std::string>& env = {});
// Run the CLI under the hook with `env` added (e.g. LUKSFORGE_HOOK_KILL=N).
RunResult run_hooked(const std::vector<std::string>& cli_args, const std::map<std::string, std::string>& env);
// 1-based index of the `nth` (1-based) event named `name`, or 0.
std::size_t event_index(const std::vector<std::string>& events, const std::string& name, std::size_t nth = 1);

// Stock `cryptsetup luksDump` accepts the header.
bool luksdump_ok(const std::filesystem::path& device);
// Stock `cryptsetup open --test-passphrase` accepts `passphrase` (any keyslot, or `slot`).
bool stock_opens(const std::filesystem::path& device, const std::string& passphrase, int slot = -1);
// The data area decrypted independently (OpenSSL AES-XTS, dm-crypt plain64) with the volume key that
// `passphrase` unlocks equals the plaintext. False when the passphrase opens nothing.
bool data_intact(const std::filesystem::path& device, const std::string& passphrase, const std::string& plain_sha256);
// LUKS2 JSON metadata as stock cryptsetup dumps it.
std::string header_json(const std::filesystem::path& device);

// The Clevis keyslots stock `clevis luks list` shows.
std::vector<int> clevis_slots(const std::filesystem::path& image);
// The passphrase stock `clevis luks pass` recovers for `slot` ("" when none).
std::string clevis_pass(const std::filesystem::path& image, int slot);
// The passphrases of the Clevis bindings stock clevis lists whose passphrase opens their keyslot.
std::vector<std::string> working_bindings(const std::filesystem::path& image);

}  // namespace luksforge::test::crash
