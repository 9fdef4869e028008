// Tang recovery replies (the body of POST /rec/{kid}) for one fixed tang JWE: JSON, key type, curve, point on
// the curve, and the final authenticated decryption. The JWE is made once per process against keys generated
// here (an offline advertisement: no server); the correct reply is checked to recover the secret, so the
// harness itself is proven to reach the end of tang_finish_recovery.
#include "fuzz_input.hpp"

#include "pins/pins.hpp"
#include "util/jose_util.hpp"

#include <luksforge/pin.hpp>

#include <cstring>
#include <string>

using namespace luksforge;

namespace {

using detail::JsonPtr;
using detail::json_take;

const std::string secret = "fuzz secret: the keyslot passphrase a tang binding protects";

JsonPtr generate(const char* alg) {
    JsonPtr key = json_take(json_pack("{s:s}", "alg", alg));
    if (!key || !jose_jwk_gen(nullptr, key.get())) fuzz::broken("cannot generate a JWK");
    return key;
}

JsonPtr public_of(const json_t* key) {
    JsonPtr copy = json_take(json_deep_copy(key));
    if (!jose_jwk_pub(nullptr, copy.get())) fuzz::broken("cannot make a public JWK");
    return copy;
}

struct Fixture {
    detail::TangJwe jwe;
    JsonPtr ephemeral;

    Fixture() {
        JsonPtr signing = generate("ES512");
        JsonPtr exchange = generate("ECMR");
        JsonPtr keys = json_take(json_pack("{s:[o,o]}", "keys", public_of(signing.get()).release(),
                                           public_of(exchange.get()).release()));
        JsonPtr config = json_take(json_pack("{s:s,s:O}", "url", "http://127.0.0.1:9", "adv", keys.get()));
        const std::string compact =
            clevis_encrypt("tang", detail::json_dump(config.get()),
                           {reinterpret_cast<const std::uint8_t*>(secret.data()), secret.size()});
        const detail::CompactJwe parts = detail::split_compact_jwe(compact);
        JsonPtr header = detail::decode_b64_json(parts.protected_b64(), "JWE protected header");
        jwe = detail::parse_tang_jwe(compact, header.get());
        ephemeral = detail::tang_ephemeral_key(jwe);

        // What tangd answers: the request point times the exchange key's private scalar.
        JsonPtr request = detail::json_parse(detail::tang_recovery_request(jwe, ephemeral.get()));
        JsonPtr reply = json_take(jose_jwk_exc(nullptr, exchange.get(), request.get()));
        if (!reply) fuzz::broken("cannot compute the correct reply");
        const SecretBuffer recovered = detail::tang_finish_recovery(jwe, ephemeral.get(), detail::json_dump(reply.get()));
        if (recovered.size() != secret.size() || std::memcmp(recovered.data(), secret.data(), secret.size()) != 0)
            fuzz::broken("the correct reply does not recover the secret");
    }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static Fixture fixture;
    fuzz::refused([&] {
        const SecretBuffer recovered =
            detail::tang_finish_recovery(fixture.jwe, fixture.ephemeral.get(), fuzz::text_of(data, size));
        // A reply the AEAD accepts must give exactly the secret; anything else is a forgery that got through.
        if (recovered.size() != secret.size() || std::memcmp(recovered.data(), secret.data(), secret.size()) != 0)
            fuzz::broken("a reply decrypted to something other than the secret");
    });
    return 0;
}
