// Internal: Shamir secret sharing over GF(p) as Clevis's sss pin does it (src/pins/sss/sss.c). The pin itself
// (sss_encrypt/sss_decrypt) is declared in pins.hpp; this header exposes the arithmetic so it can be tested
// without any Tang server.
//
// Encodings match Clevis: the prime is its big-endian bytes (32 for the 256-bit prime Clevis makes); a share is
// x then y, each big-endian and padded to the prime's length; the secret is the polynomial's constant
// coefficient, padded the same way (it becomes the A256GCM content key).
#pragma once

#include <luksforge/secret.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace luksforge::detail {

// A fresh random safe prime (p = 2q + 1, q prime) of exactly `bytes` * 8 bits, big-endian.
std::vector<std::uint8_t> shamir_generate_prime(std::size_t bytes = 32);

struct ShamirSplit {
    SecretBuffer secret;              // the constant coefficient, prime-length bytes
    std::vector<SecretBuffer> shares; // `count` points x‖y with distinct non-zero x
};

// A random polynomial of degree threshold-1 over GF(prime) evaluated at `count` random points.
// Throws FormatError when threshold is 0 or larger than count.
ShamirSplit shamir_split(std::span<const std::uint8_t> prime, std::size_t threshold, std::size_t count);

// Lagrange interpolation at 0 over the given shares (use exactly `threshold` of them: fewer give an unrelated
// value, which the caller's authenticated decryption then rejects). Throws FormatError for a share of the wrong
// length, a coordinate not below the prime, or two shares with the same x.
SecretBuffer shamir_combine(std::span<const std::uint8_t> prime, const std::vector<std::span<const std::uint8_t>>& shares);

}  // namespace luksforge::detail
