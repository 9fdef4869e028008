// Internal: the pin implementations behind clevis_encrypt/clevis_decrypt (pin.hpp). The dispatcher in
// pin.cpp parses the config / the JWE's protected header and calls the pin named by it; sss calls back into
// the dispatcher for its children, so pins nest (tang, tpm2, null and sss again under sss).
#pragma once

#include <luksforge/pin.hpp>

#include "util/json_util.hpp"

#include <jansson.h>

#include <string>
#include <vector>

namespace luksforge::detail {

// `config` is the pin's JSON configuration (borrowed). Return the compact JWE.
std::string tang_encrypt(const json_t* config, std::span<const std::uint8_t> secret, const PinOptions& options);
std::string sss_encrypt(const json_t* config, std::span<const std::uint8_t> secret, const PinOptions& options);

std::string null_encrypt(const json_t* config, std::span<const std::uint8_t> secret);
// tpm2 talks to the TPM that Clevis's rule picks (TPM2TOOLS_TCTI, else /dev/tpmrm?); see tpm2_pin.hpp.
std::string tpm2_encrypt(const json_t* config, std::span<const std::uint8_t> secret);

// JWE "dir" + "A256GCM" with a 32-byte `key`: the compact serialisation of `header` over `plaintext`, and back
// (the AAD is the base64url protected header). Shared by sss and null.
std::string dir_a256gcm_encrypt(const SecretBuffer& key, const json_t* header, std::span<const std::uint8_t> plaintext);
SecretBuffer dir_a256gcm_decrypt(const SecretBuffer& key, std::string_view compact_jwe);

// `jwe` is the whole compact JWE; `protected_header` its decoded protected header (borrowed).
SecretBuffer tang_decrypt(std::string_view jwe, const json_t* protected_header, const PinOptions& options);
SecretBuffer sss_decrypt(std::string_view jwe, const json_t* protected_header, const PinOptions& options);
SecretBuffer null_decrypt(std::string_view jwe, const json_t* protected_header);
SecretBuffer tpm2_decrypt(std::string_view jwe, const json_t* protected_header);

// tang_decrypt in its steps, so the parsing of hostile input can be fuzzed without a network (fuzz/):
// parse and validate the JWE (no network) ...
struct TangJwe {
    std::string kid, url, crv;
    JsonPtr epk;         // the client's ephemeral public key from the header
    JsonPtr server_key;  // the advertised exchange key whose thumbprint is the kid
    JsonPtr jwe;         // the general-form JWE for jose_jwe_dec
};
TangJwe parse_tang_jwe(std::string_view jwe, const json_t* protected_header);
// ... a fresh ECMR key on the JWE's curve (the caller wipes its "d") and the POST /rec/{kid} body it blinds ...
JsonPtr tang_ephemeral_key(const TangJwe& jwe);
std::string tang_recovery_request(const TangJwe& jwe, const json_t* ephemeral);
// ... and the server's reply checked (EC JWK on the right curve, a point on it) and turned into the secret.
SecretBuffer tang_finish_recovery(const TangJwe& jwe, const json_t* ephemeral, std::string_view reply_text);

// sss_decrypt's header validation (no threads, no network): threshold, prime and the children's compact JWEs.
struct SssJwe {
    std::size_t threshold = 0;
    std::vector<std::uint8_t> prime;
    std::vector<std::string> child_jwes;
};
SssJwe parse_sss_jwe(std::string_view jwe, const json_t* protected_header);

}  // namespace luksforge::detail
