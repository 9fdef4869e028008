// Internal: message digests of public data (fingerprints, policy hashes). Not for secrets' comparison.
#pragma once

#include <string>
#include <string_view>

namespace luksforge::detail {

// Lowercase hex SHA-256 of `data`. Throws Error when OpenSSL fails.
std::string sha256_hex(std::string_view data);

// Standard, padded base64 (RFC 4648 section 4) of `data`, as LUKS2 headers hold salts and digests.
std::string base64(std::string_view data);

}  // namespace luksforge::detail
