// The null pin (clevis-encrypt-null / clevis-decrypt-null): the content key travels in the JWE header itself,
// so it protects nothing. Clevis's tests and sss policies use it as a share that always (or, with
// {"fail":true}, never) decrypts. Stock Clevis reads what this writes and vice versa.
#include "pins/pins.hpp"
#include "util/json_util.hpp"

#include <luksforge/error.hpp>

#include <cstring>

namespace luksforge::detail {

std::string null_encrypt(const json_t* config, std::span<const std::uint8_t> secret) {
    const json_t* fail = json_object_get(config, "fail");
    if (fail != nullptr && !json_is_boolean(fail)) throw FormatError("null pin configuration: \"fail\" must be a boolean");
    SecretBuffer key = random_secret(32);
    const SecretBuffer k = base64url_encode(key.bytes());
    JsonPtr null_config = json_take(json_object());
    // {"fail":true}: no key in the header, so the JWE can never be decrypted (as clevis-encrypt-null).
    if (!json_is_true(fail))
        json_object_set_new(null_config.get(), "jwk",
                            json_pack("{s:s,s:s%,s:[s,s],s:s}", "alg", "A256GCM", "k", k.chars(), k.size(), "key_ops",
                                      "encrypt", "decrypt", "kty", "oct"));
    JsonPtr header = json_take(json_pack("{s:s,s:{s:O,s:s},s:s}", "alg", "dir", "clevis", "null", null_config.get(),
                                         "pin", "null", "enc", "A256GCM"));
    if (!header) throw FormatError("null pin: cannot build the JWE header");
    std::string jwe = dir_a256gcm_encrypt(key, header.get(), secret);
    if (json_t* v = json_object_get(json_object_get(null_config.get(), "jwk"), "k"); json_is_string(v))
        explicit_bzero(const_cast<char*>(json_string_value(v)), json_string_length(v));
    return jwe;
}

SecretBuffer null_decrypt(std::string_view jwe, const json_t* protected_header) {
    if (json_string_or(protected_header, "alg") != "dir" || json_string_or(protected_header, "enc") != "A256GCM")
        throw FormatError("null pin: the JWE must be \"dir\" + \"A256GCM\"");
    const json_t* jwk = json_object_get(json_object_get(json_object_get(protected_header, "clevis"), "null"), "jwk");
    if (!json_is_object(jwk))
        throw AuthError("null pin: the JWE holds no key (bound with {\"fail\":true}): it never decrypts");
    const json_t* k = json_object_get(jwk, "k");
    if (json_string_or(jwk, "kty") != "oct" || !json_is_string(k))
        throw FormatError("null pin: the JWE's key is not an oct JWK with \"k\"");
    SecretBuffer key = base64url_decode(std::string_view(json_string_value(k), json_string_length(k)));
    return dir_a256gcm_decrypt(key, jwe);
}

}  // namespace luksforge::detail
