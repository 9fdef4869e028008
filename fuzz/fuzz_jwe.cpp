// Clevis JWEs (compact serialisation) as a hostile LUKS2 token may carry them: the pin dispatch, the tang
// pin's header validation and recovery request (no network: the parse steps of tang_decrypt), the tpm2 pin's
// header and sealed-object blobs (no TPM), the sss pin's
// header validation with its children walked recursively, and the config `luksforge list` shows.
#include "fuzz_input.hpp"

#include "pins/pins.hpp"
#include "pins/tpm2_pin.hpp"
#include "util/jose_util.hpp"

#include <luksforge/clevis.hpp>

using namespace luksforge;

namespace {

void walk(std::string_view jwe, int depth) {
    const detail::CompactJwe compact = detail::split_compact_jwe(jwe);
    detail::JsonPtr header = detail::decode_b64_json(compact.protected_b64(), "JWE protected header");
    const std::string pin = detail::json_string_or(json_object_get(header.get(), "clevis"), "pin");
    if (pin == "tang") {
        const detail::TangJwe tang = detail::parse_tang_jwe(jwe, header.get());
        detail::JsonPtr ephemeral = detail::tang_ephemeral_key(tang);
        detail::tang_recovery_request(tang, ephemeral.get());
    } else if (pin == "tpm2") {
        const detail::Tpm2Jwe tpm2 = detail::parse_tpm2_jwe(jwe, header.get());
        if (tpm2.jwk_pub.empty() || tpm2.jwk_priv.empty()) fuzz::broken("tpm2 blobs accepted empty");
    } else if (pin == "sss" && depth < 4) {
        const detail::SssJwe sss = detail::parse_sss_jwe(jwe, header.get());
        if (sss.threshold == 0 || sss.threshold > sss.child_jwes.size()) fuzz::broken("sss threshold out of range");
        for (const std::string& child : sss.child_jwes) fuzz::refused([&] { walk(child, depth + 1); });
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view jwe = fuzz::text_of(data, size);
    fuzz::refused([&] { walk(jwe, 0); });
    fuzz::refused([&] { clevis::describe_jwe(jwe); });
    return 0;
}
