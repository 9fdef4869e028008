// Internal (audit): finding Tang private keys where they must not be, and the keys tang bindings trust.
//
// Plaintext regions are scanned as bytes for JWK JSON with a "d" member rather than read through a file
// system: it needs no mount (none is possible here) and no per-file-system reader (ext4, XFS, btrfs, vfat all
// store a small file's bytes contiguously — a Tang JWK is < 1 KiB, far below one block), and it also finds keys
// in deleted files, in unallocated space and in a copied /var/db/tang of any layout. It cannot see inside
// compressed or encrypted file systems (btrfs compression, fscrypt); docs/image-pipeline.md says so.
#pragma once

#include <luksforge/pipeline.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace luksforge::detail {

struct PrivateJwk {
    std::uint64_t offset = 0;                         // of its '{' from the start of the file
    std::string kty, alg, thumbprint;                 // S256 thumbprint
};

// Private JWKs in bytes [offset, offset + size) of `file` (size 0 = to the end). Holes of sparse files are
// skipped; memory stays bounded (one chunk) whatever the size.
std::vector<PrivateJwk> scan_private_jwks(const std::filesystem::path& file, std::uint64_t offset, std::uint64_t size);

// Private JWKs in the *.jwk files (rotated, hidden .*.jwk included) of a tangd key directory; none when it
// does not exist.
std::vector<FoundTangKey> host_tang_keys(const std::filesystem::path& dir);

// The Tang keys one binding trusts: for every tang pin in its JWE (sss children included), the S256
// thumbprints of the advertisement's signing keys and its exchange key (the kid).
struct TrustedTangKey {
    std::string url, role, thumbprint;                // role "signing" or "exchange"
};
std::vector<TrustedTangKey> trusted_tang_keys(std::string_view compact_jwe);

}  // namespace luksforge::detail
