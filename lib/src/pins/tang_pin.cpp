// The tang pin: Clevis's compact JWE with ECDH-ES key agreement against a Tang exchange key
// (clevis-encrypt-tang), and McCallum-Relyea recovery through the Tang server (clevis-decrypt-tang).
// libjose does the JOSE work exactly as the `jose` commands Clevis runs, so both sides read each other's JWEs.
#include "tang/ec_point.hpp"
#include "util/error_util.hpp"
#include "util/jose_util.hpp"
#include "util/json_util.hpp"
#include "pins/pins.hpp"

#include <luksforge/error.hpp>
#include <luksforge/tang.hpp>

#include <cstdlib>
#include <cstring>
#include <vector>

namespace luksforge::detail {
namespace {

bool supported_curve(std::string_view crv) { return crv == "P-256" || crv == "P-384" || crv == "P-521"; }

// The first deriveKey key of the advertisement, with key_ops and alg removed as Clevis does before using it
// as the ECDH-ES recipient key (jose would otherwise refuse it for wrapKey).
JsonPtr first_exchange_key(const json_t* keys_set) {
    const json_t* keys = json_object_get(keys_set, "keys");
    std::size_t index;
    json_t* key;
    json_array_foreach(keys, index, key) {
        if (!jose_jwk_prm(nullptr, key, true, "deriveKey")) continue;
        JsonPtr copy = json_take(json_deep_copy(key));
        json_object_del(copy.get(), "key_ops");
        json_object_del(copy.get(), "alg");
        return copy;
    }
    throw TangError("Tang advertisement has no exchange (deriveKey) key", EBADMSG);
}

// libjose keeps key material in jansson strings; overwrite them before jansson frees them.
void wipe_members(json_t* jwk, const std::vector<const char*>& names) noexcept {
    for (const char* name : names)
        if (json_t* value = json_object_get(jwk, name); json_is_string(value))
            explicit_bzero(const_cast<char*>(json_string_value(value)), json_string_length(value));
}

struct WipedJwk {
    JsonPtr& jwk;
    std::vector<const char*> names;
    ~WipedJwk() {
        if (jwk) wipe_members(jwk.get(), names);
    }
};

struct FreeWiped {
    std::size_t size = 0;
    void operator()(void* p) const noexcept {
        if (p == nullptr) return;
        explicit_bzero(p, size);
        std::free(p);
    }
};

}  // namespace

std::string tang_encrypt(const json_t* config, std::span<const std::uint8_t> secret, const PinOptions& options) {
    const tang::Config cfg = tang::parse_config(json_dump(config));
    const tang::TrustedAdvertisement trusted = tang::trusted_advertisement(cfg, options);
    JsonPtr keys_set = json_parse(trusted.advertisement.keys_json, "advertisement");

    JsonPtr exchange_key = first_exchange_key(keys_set.get());
    // A bad key in an advertisement the user supplied is bad input (7); one a server serves, a Tang failure (6).
    if (const std::optional<std::string> problem = ec_public_key_problem(exchange_key.get())) {
        if (trusted.source == tang::TrustSource::offline_advertisement)
            throw FormatError("the offline advertisement's exchange key is unusable: " + *problem);
        throw TangError("the Tang server " + excerpt(cfg.url) + " advertises an unusable exchange key: " + *problem,
                        EBADMSG);
    }
    const std::string kty = json_string_or(exchange_key.get(), "kty");
    const std::string crv = json_string_or(exchange_key.get(), "crv");
    if (kty != "EC" || !supported_curve(crv))
        throw TangError("Tang exchange key has unsupported type/curve '" + kty + "/" + crv +
                            "' (need EC P-256, P-384 or P-521)",
                        EBADMSG);
    const std::string kid = jose_thumbprint(exchange_key.get(), "S256");
    if (kid.empty()) throw TangError("cannot compute the thumbprint of the Tang exchange key", EBADMSG);

    // The protected header as clevis-encrypt-tang builds it; libjose adds "epk" and serialises it sorted.
    JsonPtr jwe = json_take(json_pack("{s:{s:s,s:s,s:{s:s,s:{s:s,s:O}},s:s}}", "protected", "alg", "ECDH-ES", "enc",
                                      "A256GCM", "clevis", "pin", "tang", "tang", "url", cfg.url.c_str(), "adv",
                                      keys_set.get(), "kid", kid.c_str()));
    if (!jwe) throw Error(ENOMEM, "cannot build the JWE header");

    // As `jose jwe enc -c` does: wrap (ECDH-ES puts "epk" into the per-recipient header), fold every header
    // into the protected one (compact serialisation has no other), then encrypt. libjose 11's
    // jose_jwe_enc() alone would leave "epk" outside the protected header.
    JoseContext jose;
    JsonPtr cek = json_take(json_object());
    if (!jose_jwe_enc_jwk(jose.native_handle(), jwe.get(), nullptr, exchange_key.get(), cek.get()))
        throw TangError("key agreement with the Tang exchange key failed: " + jose.last_error("libjose error"),
                        EBADMSG);
    JsonPtr merged = json_take(jose_jwe_hdr(jwe.get(), jwe.get()));
    if (!merged) throw Error(EIO, "cannot merge the JWE headers");
    json_object_set(jwe.get(), "protected", merged.get());
    json_object_del(jwe.get(), "unprotected");
    json_object_del(jwe.get(), "header");
    const bool encrypted = jose_jwe_enc_cek(jose.native_handle(), jwe.get(), cek.get(), secret.data(), secret.size());
    // The CEK JSON holds the content key: wipe its "k" before jansson frees it.
    if (json_t* k = json_object_get(cek.get(), "k"); json_is_string(k))
        explicit_bzero(const_cast<char*>(json_string_value(k)), json_string_length(k));
    if (!encrypted) throw Error(EIO, "JWE encryption failed: " + jose.last_error("libjose error"));

    auto field = [&](const char* name) { return json_string_or(jwe.get(), name); };
    return field("protected") + "." + field("encrypted_key") + "." + field("iv") + "." + field("ciphertext") + "." +
           field("tag");
}

TangJwe parse_tang_jwe(std::string_view jwe_text, const json_t* header) {
    const CompactJwe compact = split_compact_jwe(jwe_text);
    TangJwe parsed;

    const json_t* epk = json_object_get(header, "epk");
    if (!json_is_object(epk)) throw FormatError("tang JWE: missing the required 'epk' header parameter");
    const json_t* kid_value = json_object_get(header, "kid");
    if (!json_is_string(kid_value)) throw FormatError("tang JWE: missing the required 'kid' header parameter");
    parsed.kid = json_string_value(kid_value);
    const std::string& kid = parsed.kid;
    const json_t* tang_header = json_object_get(json_object_get(header, "clevis"), "tang");
    const json_t* adv = json_object_get(tang_header, "adv");
    if (!json_is_object(adv) || !json_is_array(json_object_get(adv, "keys")))
        throw FormatError("tang JWE: missing the required 'clevis.tang.adv' header parameter");
    parsed.url = json_string_or(tang_header, "url");
    if (parsed.url.empty()) throw FormatError("tang JWE: missing the required 'clevis.tang.url' header parameter");

    // The server's public exchange key: the advertised key whose thumbprint is the kid (S256 or S1).
    const json_t* server_key = nullptr;
    std::size_t index;
    json_t* key;
    json_array_foreach(json_object_get(adv, "keys"), index, key) {
        if (thumbprint_matches(key, kid)) {
            server_key = key;
            break;
        }
    }
    if (server_key == nullptr)
        throw AuthError("tang JWE header validation failed: kid '" + excerpt(kid, 64) +
                        "' matches no key in clevis.tang.adv (header tampered with?)");

    parsed.crv = json_string_or(epk, "crv");
    const std::string& crv = parsed.crv;
    if (json_string_or(epk, "kty") != "EC" || !supported_curve(crv))
        throw FormatError("tang JWE: epk has unsupported type/curve '" + excerpt(json_string_or(epk, "kty"), 16) + "/" +
                          excerpt(crv, 16) + "'");
    if (json_string_or(server_key, "crv") != crv)
        throw FormatError("tang JWE: wrong curve: epk is " + crv + " but the Tang key is " +
                          excerpt(json_string_or(server_key, "crv"), 16));
    if (const std::optional<std::string> problem = ec_public_key_problem(epk))
        throw FormatError("tang JWE: invalid epk: " + *problem);
    if (const std::optional<std::string> problem = ec_public_key_problem(server_key))
        throw FormatError("tang JWE: the exchange key in clevis.tang.adv is unusable: " + *problem);
    parsed.epk = json_share(const_cast<json_t*>(epk));
    parsed.server_key = json_share(const_cast<json_t*>(server_key));

    parsed.jwe = json_take(json_pack("{s:s%,s:s%,s:s%,s:s%}", "protected", compact.parts[0].data(),
                                     compact.parts[0].size(), "iv", compact.parts[2].data(), compact.parts[2].size(),
                                     "ciphertext", compact.parts[3].data(), compact.parts[3].size(), "tag",
                                     compact.parts[4].data(), compact.parts[4].size()));
    if (!parsed.jwe) throw FormatError("tang JWE: parts are not valid UTF-8");
    if (!compact.parts[1].empty())
        json_object_set_new(parsed.jwe.get(), "encrypted_key",
                            json_stringn(compact.parts[1].data(), compact.parts[1].size()));
    return parsed;
}

JsonPtr tang_ephemeral_key(const TangJwe& jwe) {
    JoseContext jose;
    JsonPtr ephemeral = json_take(json_pack("{s:s,s:s}", "alg", "ECMR", "crv", jwe.crv.c_str()));
    if (!jose_jwk_gen(jose.native_handle(), ephemeral.get())) {
        wipe_members(ephemeral.get(), {"d"});
        throw Error(EIO, "cannot generate an ephemeral key: " + jose.last_error("libjose error"));
    }
    return ephemeral;
}

std::string tang_recovery_request(const TangJwe& jwe, const json_t* ephemeral) {
    // X = epk + E.pub (ECMR point addition: local public, remote private).
    JoseContext jose;
    JsonPtr exchange = json_take(jose_jwk_exc(jose.native_handle(), jwe.epk.get(), ephemeral));
    if (!exchange) throw FormatError("tang JWE: invalid epk: " + jose.last_error("key exchange failed"));
    json_object_set_new(exchange.get(), "alg", json_string("ECMR"));
    return json_dump(exchange.get());
}

SecretBuffer tang_finish_recovery(const TangJwe& jwe, const json_t* ephemeral, std::string_view reply_text) {
    const std::string& url = jwe.url;
    const std::string& crv = jwe.crv;
    JsonPtr reply;
    try {
        reply = json_parse(reply_text, "Tang recovery reply");
    } catch (const FormatError& e) {
        throw TangError(std::string("malformed reply from ") + excerpt(url) + "/rec/" + excerpt(jwe.kid, 64) + ": " +
                            e.what(),
                        EBADMSG);
    }
    if (!json_is_object(reply.get()) || json_string_or(reply.get(), "kty") != "EC")
        throw TangError("invalid Tang recovery reply from " + excerpt(url) + ": not an EC JWK", EBADMSG);
    if (json_string_or(reply.get(), "crv") != crv)
        throw TangError("invalid Tang recovery reply from " + excerpt(url) + ": wrong curve '" +
                            excerpt(json_string_or(reply.get(), "crv"), 16) + "', expected " + crv,
                        EBADMSG);

    if (const std::optional<std::string> problem = ec_public_key_problem(reply.get()))
        throw TangError("invalid Tang recovery reply from " + excerpt(url) + ": " + *problem, EBADMSG);

    // Shared point Z = Y - E.d * S (ECMR: private·public, then public − public).
    JoseContext jose;
    JsonPtr product = json_take(jose_jwk_exc(jose.native_handle(), ephemeral, jwe.server_key.get()));
    WipedJwk wipe_product{product, {"x", "y"}};
    if (!product) throw Error(EIO, "key exchange with the Tang key failed: " + jose.last_error("libjose error"));
    json_object_set_new(product.get(), "alg", json_string("ECMR"));
    if (!jose_jwk_pub(jose.native_handle(), reply.get()))
        throw TangError("invalid Tang recovery reply from " + excerpt(url), EBADMSG);
    JsonPtr shared = json_take(jose_jwk_exc(jose.native_handle(), reply.get(), product.get()));
    WipedJwk wipe_shared{shared, {"x", "y"}};
    if (!shared)
        throw TangError("invalid Tang recovery reply from " + excerpt(url) + ": " + jose.last_error("point not on curve"),
                        EBADMSG);

    // jose_jwe_dec may add members to the JWE it is given: decrypt a copy so `jwe` stays reusable.
    JsonPtr copy = json_take(json_deep_copy(jwe.jwe.get()));
    std::size_t plain_size = 0;
    void* plain = jose_jwe_dec(jose.native_handle(), copy.get(), nullptr, shared.get(), &plain_size);
    std::unique_ptr<void, FreeWiped> owned(plain, FreeWiped{plain_size});
    if (plain == nullptr)
        throw AuthError("tang JWE does not decrypt: authentication failed (tampered JWE, or the Tang server holds "
                        "another key for this kid)");
    return SecretBuffer(plain, plain_size);
}

// In named steps so the parsing of hostile input can be fuzzed without a network (fuzz/).
SecretBuffer tang_decrypt(std::string_view jwe_text, const json_t* header, const PinOptions& options) {
    const TangJwe jwe = parse_tang_jwe(jwe_text, header);
    JsonPtr ephemeral = tang_ephemeral_key(jwe);
    WipedJwk wipe_ephemeral{ephemeral, {"d"}};
    const std::string request = tang_recovery_request(jwe, ephemeral.get());
    tang::Client client(jwe.url, options.network);
    const std::string reply_text = client.recover(jwe.kid, request);
    return tang_finish_recovery(jwe, ephemeral.get(), reply_text);
}

}  // namespace luksforge::detail
