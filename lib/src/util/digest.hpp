// Internal: message digests of public data (fingerprints, policy hashes). Not for secrets' comparison.
#pragma once

#include <string>
#include <string_view>

namespace luksforge::detail {

// Lowercase hex SHA-256 of `data`. Throws Error when OpenSSL fails.
std::string sha256_hex(std::string_view data);

}  // namespace luksforge::detail
