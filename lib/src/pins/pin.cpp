// The pin dispatcher behind clevis_encrypt/clevis_decrypt: parse the config or the JWE's protected header and
// hand over to the pin it names (tang, tpm2, sss, null). sss calls back in here for its children, so pins nest.
#include "util/error_util.hpp"
#include "util/jose_util.hpp"
#include "util/json_util.hpp"
#include "pins/pins.hpp"

#include <luksforge/error.hpp>
#include <luksforge/pin.hpp>

namespace luksforge {

std::string clevis_encrypt(std::string_view pin, std::string_view config_json, std::span<const std::uint8_t> secret,
                           const PinOptions& options) {
    detail::JsonPtr config = detail::json_parse(config_json, "pin configuration");
    if (!json_is_object(config.get())) throw FormatError("pin configuration must be a JSON object");
    if (secret.empty()) throw FormatError("refusing to encrypt an empty secret");
    if (pin == "tang") return detail::tang_encrypt(config.get(), secret, options);
    if (pin == "sss") return detail::sss_encrypt(config.get(), secret, options);
    if (pin == "tpm2") return detail::tpm2_encrypt(config.get(), secret);
    if (pin == "null") return detail::null_encrypt(config.get(), secret);
    throw FormatError("unknown pin '" + detail::excerpt(pin, 64) + "' (supported: tang, tpm2, sss, null)");
}

SecretBuffer clevis_decrypt(std::string_view compact_jwe, const PinOptions& options) {
    const detail::CompactJwe jwe = detail::split_compact_jwe(compact_jwe);
    detail::JsonPtr header = detail::decode_b64_json(jwe.protected_b64(), "JWE protected header");
    const json_t* pin = json_object_get(json_object_get(header.get(), "clevis"), "pin");
    if (!json_is_string(pin)) throw FormatError("JWE protected header has no clevis.pin: not a Clevis JWE");
    const std::string_view name = json_string_value(pin);
    if (name == "tang") return detail::tang_decrypt(compact_jwe, header.get(), options);
    if (name == "sss") return detail::sss_decrypt(compact_jwe, header.get(), options);
    if (name == "tpm2") return detail::tpm2_decrypt(compact_jwe, header.get());
    if (name == "null") return detail::null_decrypt(compact_jwe, header.get());
    throw FormatError("unsupported pin '" + detail::excerpt(name, 64) + "' in JWE (supported: tang, tpm2, sss, null)");
}

}  // namespace luksforge
