// regen in place, as `clevis luks regen` does (the binding keeps its keyslot and token id), but crash-safe and
// with room for one clevis token only.
//
// Order of operations (each step one atomic LUKS2 header write; S = the binding's keyslot, T = a temporary
// keyslot, X = the binding's token id, M = a small "luksforge-regen" record token naming S, T, X and the
// SHA-256 of the new JWE):
//   1. write M            2. add T with the new passphrase     (prove: the new JWE opens T through the server)
//   3. X := new JWE → T   4. destroy S   5. add S with the new passphrase   6. X := new JWE → S
//   7. destroy T          8. remove M
// Before 3 the old binding (X → S) is untouched; from 3 on the new binding (X → T, later X → S) opens the
// volume. A rerun that finds M tells the two apart by the JWE hash: before 3 it removes T and M and starts
// again, from 3 on it recovers the new passphrase from X and finishes 4-8, skipping what is already done.
#include "clevis/clevis_internal.hpp"

#include "util/digest.hpp"
#include "util/jose_util.hpp"
#include "util/json_util.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>
#include <luksforge/tang.hpp>

#include <algorithm>

namespace luksforge::clevis {
namespace {

using detail::JsonPtr;
using detail::json_take;
using namespace clevis::internal;

constexpr const char* regen_token_type = "luksforge-regen";

struct RegenRecord {
    int token_id = -1;        // the record's own token id
    int keyslot = -1;         // S
    int temp_keyslot = -1;    // T
    int binding_token = -1;   // X
    std::string new_jwe_sha256;
};

std::string record_json(const RegenRecord& r) {
    JsonPtr json = json_take(json_pack("{s:s,s:[],s:i,s:i,s:i,s:s}", "type", regen_token_type, "keyslots", "keyslot",
                                       r.keyslot, "temp_keyslot", r.temp_keyslot, "token", r.binding_token,
                                       "new_jwe_sha256", r.new_jwe_sha256.c_str()));
    if (!json) throw FormatError("cannot build the regen record");
    return detail::json_dump(json.get());
}

std::vector<RegenRecord> regen_records(const Volume& volume) {
    std::vector<RegenRecord> result;
    for (const Token& token : volume.tokens()) {
        if (token.type != regen_token_type) continue;
        RegenRecord r;
        r.token_id = token.id;
        try {
            JsonPtr json = detail::json_parse(token.json, "regen record");
            auto number = [&](const char* key) {
                const json_t* v = json_object_get(json.get(), key);
                return json_is_integer(v) ? static_cast<int>(json_integer_value(v)) : -1;
            };
            r.keyslot = number("keyslot");
            r.temp_keyslot = number("temp_keyslot");
            r.binding_token = number("token");
            r.new_jwe_sha256 = detail::json_string_or(json.get(), "new_jwe_sha256");
        } catch (const FormatError&) {
        }
        result.push_back(std::move(r));
    }
    return result;
}

int free_keyslot_other_than(const Volume& volume, int keyslot) {
    for (int slot = 0; slot < 32; ++slot)
        if (slot != keyslot && !volume.keyslot(slot)) return slot;
    throw FormatError("regen needs one free keyslot for a moment; all 32 are in use");
}

// Destroy the temporary keyslot of an interrupted regen, unless a token serves it (then it is not ours).
void remove_temp_keyslot(Volume& volume, const RegenRecord& r) {
    if (r.temp_keyslot >= 0 && r.temp_keyslot != r.keyslot && volume.keyslot(r.temp_keyslot) &&
        !keyslot_served(volume, r.temp_keyslot))
        volume.remove_keyslot(r.temp_keyslot);
}

// Make `keyslot` hold `passphrase` (pbkdf), using the volume key: destroy an old content first.
void rewrite_keyslot(Volume& volume, int keyslot, const SecretBuffer& passphrase, const SecretBuffer& volume_key,
                     const Pbkdf& pbkdf) {
    if (volume.keyslot(keyslot)) {
        if (volume.test_passphrase(passphrase.view(), keyslot) == keyslot) return;  // already done
        volume.remove_keyslot(keyslot);
        crash_point("regen-old-keyslot-removed");
    }
    volume.add_keyslot_by_volume_key(passphrase.view(), pbkdf, keyslot, &volume_key);
    crash_point("regen-keyslot-rewritten");
}

// Steps 4-8, from wherever an earlier run stopped. The token X holds the new JWE.
void finish_switch(Volume& volume, const RegenRecord& r, const std::string& new_jwe, const SecretBuffer& passphrase,
                   const SecretBuffer& volume_key, const Pbkdf& pbkdf) {
    rewrite_keyslot(volume, r.keyslot, passphrase, volume_key, pbkdf);
    const std::optional<Token> current = volume.token(r.binding_token);
    if (!current || current->keyslots != std::vector<int>{r.keyslot}) {
        volume.set_token(token_json(r.keyslot, new_jwe), r.binding_token);
        crash_point("regen-token-moved");
    }
    if (r.temp_keyslot != r.keyslot && volume.keyslot(r.temp_keyslot)) {
        volume.remove_keyslot(r.temp_keyslot);
        crash_point("regen-temp-keyslot-removed");
    }
    if (volume.token(r.token_id)) volume.remove_token(r.token_id);
}

// An interrupted regen found on the volume: finish it when the new binding was already stored, otherwise
// undo its traces. Returns the finished result, or nullopt after an undo.
std::optional<RegenResult> resume(Volume& volume, const RegenRecord& r, const RegenOptions& options) {
    const std::optional<Token> binding = r.binding_token >= 0 ? volume.token(r.binding_token) : std::nullopt;
    std::string jwe;
    if (binding && binding->type == "clevis") {
        try {
            jwe = token_to_compact(binding->json);
        } catch (const FormatError&) {
        }
    }
    const bool switched = !jwe.empty() && !r.new_jwe_sha256.empty() && detail::sha256_hex(jwe) == r.new_jwe_sha256;
    if (!switched || r.keyslot < 0) {
        // Interrupted before the new binding was stored: the old one is intact. Remove what the run added.
        remove_temp_keyslot(volume, r);
        if (r.token_id >= 0 && volume.token(r.token_id)) volume.remove_token(r.token_id);
        return std::nullopt;
    }
    SecretBuffer passphrase;
    try {
        passphrase = clevis_decrypt(jwe, options.bind.pin);
    } catch (const TangError& e) {
        throw TangError("an interrupted regen of keyslot " + std::to_string(r.keyslot) +
                            " stored its new binding (token " + std::to_string(r.binding_token) +
                            "); finishing it needs the server(s): " + e.what() + "; run regen again when they answer",
                        e.code().value());
    }
    SecretBuffer volume_key = volume.volume_key(passphrase.view());
    const Pbkdf pbkdf = resolved_pbkdf(volume, options.bind.pbkdf);
    finish_switch(volume, r, jwe, passphrase, volume_key, pbkdf);
    RegenResult result;
    result.old_keyslot = r.keyslot;
    result.resumed = true;
    result.bound.keyslot = r.keyslot;
    result.bound.token = r.binding_token;
    result.bound.verification = Verification::verified;
    result.bound.message = "finished an interrupted regen: keyslot " + std::to_string(r.keyslot) + " (token " +
                           std::to_string(r.binding_token) + ") holds the new binding, verified through the server";
    return result;
}

// The config for re-binding a tang JWE to the server's current keys, trusted through the old signing key:
// tangd signs /adv/{old thp} with the rotated-out key as well, and the old JWE's header holds that key.
// Returns {"url":..., "adv": <the verified current JWK set>}.
std::string rotated_config_from_old(std::string_view compact_jwe, const PinOptions& options) {
    const detail::CompactJwe parts = detail::split_compact_jwe(compact_jwe);
    JsonPtr header = detail::decode_b64_json(parts.protected_b64(), "JWE protected header");
    const json_t* tang_header = json_object_get(json_object_get(header.get(), "clevis"), "tang");
    const std::string url = detail::json_string_or(tang_header, "url");
    const json_t* old_adv = json_object_get(tang_header, "adv");
    const json_t* keys = json_object_get(old_adv, "keys");
    std::size_t index;
    json_t* key;
    std::string last_error = "the old advertisement has no signing key";
    json_array_foreach(keys, index, key) {
        if (!jose_jwk_prm(nullptr, key, true, "verify")) continue;
        const std::string thp = detail::jose_thumbprint(key, "S256");
        try {
            tang::Client client(url, options.network);
            const tang::Advertisement current =
                tang::parse_advertisement(client.fetch_advertisement_text(thp), detail::json_dump(old_adv));
            if (!current.has_signing_key(thp)) {
                last_error = "the old signing key " + thp + " did not sign the current advertisement";
                continue;
            }
            JsonPtr current_keys = detail::json_parse(current.keys_json, "advertisement");
            JsonPtr config = json_take(json_pack("{s:s,s:O}", "url", url.c_str(), "adv", current_keys.get()));
            return detail::json_dump(config.get());
        } catch (const TangError& e) {
            last_error = e.what();
        }
    }
    throw TangError("regen: cannot trust the current advertisement of " + url.substr(0, 200) +
                    " through the old signing key (" + last_error +
                    "); pass a config with \"thp\" (or trust-on-first-use)");
}

// The volume key through the old binding, or else through the existing passphrase (as Clevis asks for one).
SecretBuffer regen_volume_key(const Volume& volume, int keyslot, const RegenOptions& options, bool& used_existing) {
    used_existing = false;
    try {
        Unlocked old = unlock(volume, keyslot, options.bind.pin);
        return volume.volume_key(old.passphrase.view(), old.keyslot);
    } catch (const Error& recovery) {
        if (!options.existing_passphrase)
            throw TangError(std::string("regen: the binding of keyslot ") + std::to_string(keyslot) +
                                " no longer recovers its passphrase (" + recovery.what() +
                                "); give an existing passphrase of the volume (--passphrase-file)",
                            dynamic_cast<const TangError*>(&recovery) ? recovery.code().value() : EACCES);
    }
    try {
        SecretBuffer key = volume.volume_key(*options.existing_passphrase);
        used_existing = true;
        return key;
    } catch (const AuthError&) {
        throw AuthError("regen: the old binding does not recover and the existing passphrase opens no keyslot of " +
                        volume.path().string());
    }
}

}  // namespace

std::vector<std::string> regen_crash_points() {
    return {"regen-record-written",     "regen-temp-keyslot-added", "regen-token-replaced",
            "regen-old-keyslot-removed", "regen-keyslot-rewritten", "regen-token-moved",
            "regen-temp-keyslot-removed"};
}

RegenResult regen(Volume& volume, int keyslot, const RegenOptions& options) {
    if (volume.luks_version() != 2) throw FormatError(internal::luks1_refusal(volume));
    // An interrupted bind first (bind_record.cpp): its keyslot must not stay without its token.
    settle_interrupted_binds(volume, options.bind.pin);
    bool resumed_other = false;
    for (const RegenRecord& record : regen_records(volume)) {
        std::optional<RegenResult> finished = resume(volume, record, options);
        if (finished && record.keyslot == keyslot) return *finished;
        resumed_other = resumed_other || finished.has_value();
    }
    (void)resumed_other;

    const std::optional<Token> old_token = token_for_keyslot(volume, keyslot);
    if (!old_token)
        throw NotFoundError("no Clevis token is bound to keyslot " + std::to_string(keyslot) + " of " +
                            volume.path().string());
    const std::string old_jwe = token_to_compact(old_token->json);
    const auto [pin, old_config] = internal::describe_jwe_faithful(old_jwe);

    RegenResult result;
    result.old_keyslot = keyslot;
    SecretBuffer volume_key = regen_volume_key(volume, keyslot, options, result.used_existing_passphrase);

    // The new binding's config and trust, as `clevis luks regen` re-makes it.
    PinOptions pin_options = options.bind.pin;
    std::string config = options.config_json.value_or(old_config);
    if (!options.config_json) {
        if (pin == "tang") {
            // Trust chain across rotation: the old advertisement (in the JWE header) names the old signing key;
            // tangd still signs /adv/{old thp} with it, vouching for the current keys.
            if (!pin_options.trust_on_first_use) config = rotated_config_from_old(old_jwe, pin_options);
        } else {
            // Nested pins: trust the servers the binding already names, as `clevis luks regen` does.
            pin_options.trust_on_first_use = true;
        }
    }
    // Network first: nothing is written until the new JWE exists and fits.
    SecretBuffer passphrase = new_slot_passphrase();
    const std::string new_jwe = clevis_encrypt(pin, config, passphrase.bytes(), pin_options);
    RegenRecord record;
    record.keyslot = keyslot;
    record.temp_keyslot = free_keyslot_other_than(volume, keyslot);
    record.binding_token = old_token->id;
    record.new_jwe_sha256 = detail::sha256_hex(new_jwe);
    const std::string record_text = record_json(record);
    const std::size_t old_bytes = token_json(keyslot, old_jwe).size();
    const std::size_t new_bytes = token_json(31, new_jwe).size();
    check_metadata_room(volume, std::max(old_bytes, new_bytes) + keyslot_json_bytes + record_text.size() + 8,
                        old_bytes);
    const Pbkdf pbkdf = resolved_pbkdf(volume, options.bind.pbkdf);

    // 1-2: the record, then the temporary keyslot with the new passphrase.
    record.token_id = volume.set_token(record_text);
    crash_point("regen-record-written");
    try {
        volume.add_keyslot_by_volume_key(passphrase.view(), pbkdf, record.temp_keyslot, &volume_key);
        crash_point("regen-temp-keyslot-added");
        // The proof, before the old binding is touched: the new JWE decrypts through the server(s) and opens T.
        prove_binding(volume, new_jwe, passphrase, record.temp_keyslot, pin_options);
    } catch (...) {
        try {
            remove_temp_keyslot(volume, record);
            volume.remove_token(record.token_id);
        } catch (...) {
        }
        throw;
    }
    // 3: the switch — one header write replaces the old JWE by the new one, now serving T.
    volume.set_token(token_json(record.temp_keyslot, new_jwe), record.binding_token);
    crash_point("regen-token-replaced");
    // 4-8.
    finish_switch(volume, record, new_jwe, passphrase, volume_key, pbkdf);

    if (volume.test_passphrase(passphrase.view(), keyslot) != keyslot)
        throw Error(EIO, "regen: keyslot " + std::to_string(keyslot) + " does not open with its new passphrase");
    result.bound.keyslot = keyslot;
    result.bound.token = record.binding_token;
    result.bound.verification = Verification::verified;
    result.bound.message = "regenerated keyslot " + std::to_string(keyslot) + " (token " +
                           std::to_string(record.binding_token) +
                           ") in place; verified through the server: the new token opens its keyslot";
    return result;
}

}  // namespace luksforge::clevis
