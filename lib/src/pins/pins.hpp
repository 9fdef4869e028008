// Internal: the pin implementations behind clevis_encrypt/clevis_decrypt (pin.hpp). The dispatcher in
// pin.cpp parses the config / the JWE's protected header and calls the pin named by it; sss calls back into
// the dispatcher for its children, so pins nest.
#pragma once

#include <luksforge/pin.hpp>

#include <jansson.h>

namespace luksforge::detail {

// `config` is the pin's JSON configuration (borrowed). Return the compact JWE.
std::string tang_encrypt(const json_t* config, std::span<const std::uint8_t> secret, const PinOptions& options);
std::string sss_encrypt(const json_t* config, std::span<const std::uint8_t> secret, const PinOptions& options);

std::string null_encrypt(const json_t* config, std::span<const std::uint8_t> secret);

// JWE "dir" + "A256GCM" with a 32-byte `key`: the compact serialisation of `header` over `plaintext`, and back
// (the AAD is the base64url protected header). Shared by sss and null.
std::string dir_a256gcm_encrypt(const SecretBuffer& key, const json_t* header, std::span<const std::uint8_t> plaintext);
SecretBuffer dir_a256gcm_decrypt(const SecretBuffer& key, std::string_view compact_jwe);

// `jwe` is the whole compact JWE; `protected_header` its decoded protected header (borrowed).
SecretBuffer tang_decrypt(std::string_view jwe, const json_t* protected_header, const PinOptions& options);
SecretBuffer sss_decrypt(std::string_view jwe, const json_t* protected_header, const PinOptions& options);
SecretBuffer null_decrypt(std::string_view jwe, const json_t* protected_header);

}  // namespace luksforge::detail
