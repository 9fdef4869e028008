// Tang advertisements as `GET /adv` serves them (JWS, general or flattened) or as an offline JWK set, with an
// optional second document after a NUL byte: the extra trusted keys regen passes (an old advertisement).
#include "fuzz_input.hpp"

#include <luksforge/tang.hpp>

using namespace luksforge;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto [adv_text, extra] = fuzz::split_at_nul(fuzz::text_of(data, size));
    fuzz::refused([&, adv_text = adv_text, extra = extra] {
        const tang::Advertisement adv = tang::parse_advertisement(adv_text, extra);
        // What was verified must be found again by thumbprint, and the verified key set must parse on its own.
        for (const std::string& thp : adv.signing_thumbprints)
            if (!adv.has_signing_key(thp)) fuzz::broken("a verified signing key is not found by its thumbprint");
        adv.has_signing_key("");
        const tang::Advertisement again = tang::parse_advertisement(adv.keys_json);
        if (again.signing_thumbprints != adv.signing_thumbprints ||
            again.exchange_thumbprints != adv.exchange_thumbprints)
            fuzz::broken("keys_json does not describe the same keys");
    });
    fuzz::refused([&, adv_text = adv_text] { tang::jwk_thumbprint(adv_text); });
    return 0;
}
