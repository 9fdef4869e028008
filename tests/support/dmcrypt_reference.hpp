// An independent reference for what dm-crypt reads: decrypt a LUKS2 data area with a volume key using OpenSSL
// directly, so tests can prove data survives re-keying without trusting luksforge or libcryptsetup to decrypt.
#pragma once

#include <luksforge/secret.hpp>

#include <cstdint>
#include <string>

namespace luksforge::test {

// dm-crypt aes-xts-plain64 with a 512-bit key: each `sector_size` block is one XTS data unit whose IV is the
// little-endian sector number counted in 512-byte units (dm-crypt's default without iv_large_sectors),
// zero-padded to 16 bytes. `ciphertext` starts at the data segment's offset (sector 0).
std::string decrypt_xts_plain64(const std::string& ciphertext, const SecretBuffer& key, std::uint32_t sector_size);

}  // namespace luksforge::test
