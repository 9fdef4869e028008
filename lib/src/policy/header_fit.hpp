// Internal: the LUKS2 JSON sizes the header-fit arithmetic is built from (lib/src/policy/header_fit.cpp).
#pragma once

#include <luksforge/luks.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>

namespace luksforge::detail {

// On-disk (compact) LUKS2 JSON, measured with libcryptsetup 2.6 (in parentheses) and rounded up a little
// (docs/policy.md, "Room in the header"): the sums are upper bounds within about 3 % of the real peak. The
// binary header in front of the JSON area is 4 KiB; the JSON text and its terminating NUL share the rest.
constexpr std::size_t binary_header_bytes = 4096;
constexpr std::size_t fresh_header_json = 760;     // `cryptsetup luksFormat`/anaconda: config, one segment, one digest, one keyslot (732-736)
constexpr std::size_t keyslot_json = 320;          // one more keyslot (pbkdf2 296, argon2id 300)
constexpr std::size_t token_entry_overhead = 16;   // `"N":` and separators around a token's own JSON (5)
constexpr std::size_t seal_state_json = 280;       // seal's luksforge-seal record (209 with one pending keyslot)
constexpr std::size_t reencryption_json = 1120;    // a running re-encryption besides its new keyslot: reencrypt keyslot, segments, digest (1084)

// Length of the primary header's JSON text as stored (up to the first NUL of the JSON area after the binary
// header); nullopt when the device cannot be read.
std::optional<std::size_t> on_disk_json_length(const std::filesystem::path& device, std::uint64_t metadata_bytes);

// The volume's metadata size and the length of its JSON as stored (crypt_dump_json's when unreadable).
struct HeaderUse {
    std::uint64_t metadata_bytes = 0;
    std::size_t json_bytes = 0;
    std::size_t available() const {
        return metadata_bytes > binary_header_bytes ? static_cast<std::size_t>(metadata_bytes - binary_header_bytes - 1) : 0;
    }
};
HeaderUse header_use(const Volume& volume);

}  // namespace luksforge::detail
