// Clevis LUKS2 bindings: bind/unlock/unbind/list/regen over the `clevis` token Clevis writes
// (clevis-luks-common-functions: clevis_luks2_save_slot, clevis_luks_add_key, clevis_luks_print_pin_config).
#include <luksforge/clevis.hpp>

#include "util/cryptsetup_util.hpp"
#include "util/jose_util.hpp"
#include "util/json_util.hpp"

#include <luksforge/error.hpp>
#include <luksforge/tang.hpp>

#include <libcryptsetup.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <unistd.h>

namespace luksforge::clevis {
namespace {

using detail::JsonPtr;
using detail::json_take;

// Clevis makes the slot passphrase as the "k" of a 40-byte random oct JWK: 54 base64url characters.
SecretBuffer new_slot_passphrase() {
    SecretBuffer raw = random_secret(40);
    return base64url_encode(raw.bytes());
}

// What a new keyslot adds to the compact LUKS2 JSON: measured 296 bytes for a pbkdf2 slot plus ~14 for its key,
// the token's key and the digest's slot reference (argon2 slots are about as long); 400 leaves room.
constexpr std::size_t keyslot_json_bytes = 400;

// Refuse before writing anything when the keyslot and token would not fit the LUKS2 JSON metadata area.
void check_metadata_room(const Volume& volume, std::size_t token_bytes) {
    auto guard = detail::cryptsetup_guard();
    crypt_device* cd = volume.native_handle();
    std::uint64_t metadata_size = 0, keyslots_size = 0;
    detail::check_crypt(crypt_get_metadata_size(cd, &metadata_size, &keyslots_size), "reading the LUKS2 metadata size");
    const char* json = nullptr;
    detail::check_crypt(crypt_dump_json(cd, &json, 0), "reading the LUKS2 metadata");
    // crypt_dump_json() re-serialises with spacing (~50 % longer); the area holds the compact text, which is
    // exactly jansson's compact form of it (checked against the on-disk bytes).
    const std::size_t used = json ? detail::json_dump(detail::json_parse(json, "LUKS2 metadata").get()).size() : 0;
    // The metadata area holds the 4 KiB binary header and the JSON text (NUL-terminated).
    const std::size_t capacity = metadata_size > 4096 ? metadata_size - 4096 - 1 : 0;
    const std::size_t needed = used + token_bytes + keyslot_json_bytes + 16;
    if (needed > capacity)
        throw FormatError("the Clevis token (" + std::to_string(token_bytes) + " bytes) and its keyslot do not fit the " +
                          "LUKS2 metadata: " + std::to_string(used) + " of " + std::to_string(capacity) +
                          " JSON bytes used, about " + std::to_string(needed) +
                          " needed; format with a larger metadata area (e.g. --metadata-size 64K)");
}

// The keyslot a clevis token names (Clevis binds one keyslot per token), or nullopt.
std::optional<int> token_keyslot(const Token& token) {
    if (token.keyslots.size() != 1) return std::nullopt;
    return token.keyslots.front();
}

std::vector<Token> clevis_tokens(const Volume& volume) {
    std::vector<Token> result;
    for (auto& token : volume.tokens())
        if (token.type == "clevis") result.push_back(std::move(token));
    return result;
}

std::optional<Token> token_for_keyslot(const Volume& volume, int keyslot) {
    for (auto& token : clevis_tokens(volume))
        if (token_keyslot(token) == keyslot) return token;
    return std::nullopt;
}

bool is_network_failure(const TangError& e) {
    const int code = e.code().value();
    return code == ECONNREFUSED || code == ETIMEDOUT || code == EHOSTUNREACH || code == ENETUNREACH;
}

// Remove what a failed bind added; never throws (the original error is what the caller must see).
void roll_back(Volume& volume, int token, int keyslot) noexcept {
    try {
        if (token >= 0) volume.remove_token(token);
    } catch (...) {
    }
    try {
        if (keyslot >= 0) volume.remove_keyslot(keyslot);
    } catch (...) {
    }
}

template <typename AddKeyslot>
BindResult bind_impl(Volume& volume, std::string_view pin, std::string_view config_json, const BindOptions& options,
                     AddKeyslot add_keyslot) {
    if (volume.luks_version() != 2) throw FormatError("Clevis tokens need LUKS2: " + volume.path().string());
    if (options.keyslot >= 0 && volume.keyslot(options.keyslot))
        throw FormatError("keyslot " + std::to_string(options.keyslot) + " is already in use");

    SecretBuffer passphrase = new_slot_passphrase();
    // Encrypt first: network and trust failures must leave the header untouched.
    const std::string jwe = clevis_encrypt(pin, config_json, passphrase.bytes(), options.pin);
    // Size check with a placeholder keyslot number of the widest form ("31").
    check_metadata_room(volume, token_json(31, jwe).size());

    BindResult result;
    result.keyslot = add_keyslot(passphrase.view(), options.pbkdf, options.keyslot);
    try {
        result.token = volume.set_token(token_json(result.keyslot, jwe));
    } catch (...) {
        roll_back(volume, -1, result.keyslot);
        throw;
    }

    if (!options.verify) {
        result.verification = Verification::skipped;
        result.message = "bound keyslot " + std::to_string(result.keyslot) + " (token " +
                         std::to_string(result.token) + "); verification skipped";
        return result;
    }
    try {
        // Through the real server: recover from the token as stored, then open the new keyslot with it.
        const std::optional<Token> stored = volume.token(result.token);
        if (!stored) throw Error(EIO, "the new token vanished");
        SecretBuffer recovered = clevis_decrypt(token_to_compact(stored->json), options.pin);
        if (!recovered.equals(passphrase.bytes()))
            throw AuthError("verification failed: the token decrypts to another passphrase");
        if (volume.test_passphrase(recovered.view(), result.keyslot) != result.keyslot)
            throw AuthError("verification failed: the recovered passphrase does not open keyslot " +
                            std::to_string(result.keyslot));
        result.verification = Verification::verified;
        result.message = "bound keyslot " + std::to_string(result.keyslot) + " (token " + std::to_string(result.token) +
                         "); verified through the server: the token opens its keyslot";
    } catch (const TangError& e) {
        if (!is_network_failure(e)) {
            roll_back(volume, result.token, result.keyslot);
            throw TangError(std::string("binding removed again, verification failed: ") + e.what(), e.code().value());
        }
        result.verification = Verification::server_unreachable;
        result.message = "bound keyslot " + std::to_string(result.keyslot) + " (token " + std::to_string(result.token) +
                         ") but NOT verified: the Tang server is unreachable (" + e.what() + ")";
    } catch (...) {
        roll_back(volume, result.token, result.keyslot);
        throw;
    }
    return result;
}

JsonPtr header_of(std::string_view compact_jwe) {
    const detail::CompactJwe jwe = detail::split_compact_jwe(compact_jwe);
    return detail::decode_b64_json(jwe.protected_b64(), "JWE protected header");
}

// The config object Clevis shows for one pin (clevis_luks_print_pin_config).
JsonPtr pin_config(const json_t* header, std::string& pin) {
    const json_t* clevis = json_object_get(header, "clevis");
    pin = detail::json_string_or(clevis, "pin");
    const json_t* content = json_object_get(clevis, pin.c_str());
    if (pin.empty() || !json_is_object(content)) throw FormatError("JWE header has no clevis pin configuration");
    if (pin == "tang") return json_take(json_pack("{s:s}", "url", detail::json_string_or(content, "url").c_str()));
    if (pin == "tpm2") {
        JsonPtr config = json_take(json_object());
        for (const char* key : {"hash", "key", "pcr_bank", "pcr_ids", "pcr_digest"})
            if (const json_t* v = json_object_get(content, key)) json_object_set(config.get(), key, const_cast<json_t*>(v));
        return config;
    }
    if (pin == "sss") {
        // Children grouped by pin, in order; every child JWE is described recursively.
        JsonPtr pins = json_take(json_object());
        std::vector<std::string> order;
        std::size_t index;
        json_t* child;
        json_array_foreach(json_object_get(content, "jwe"), index, child) {
            if (!json_is_string(child)) continue;
            std::string child_pin;
            JsonPtr child_header;
            JsonPtr child_config;
            try {
                child_header = header_of(json_string_value(child));
                child_config = pin_config(child_header.get(), child_pin);
            } catch (const FormatError&) {
                continue;  // as clevis: undecodable children are skipped
            }
            json_t* list = json_object_get(pins.get(), child_pin.c_str());
            if (!list) json_object_set_new(pins.get(), child_pin.c_str(), list = json_array());
            json_array_append(list, child_config.get());
        }
        // Clevis writes a single nested sss child as an object, not an array.
        json_t* nested = json_object_get(pins.get(), "sss");
        if (json_array_size(nested) == 1) json_object_set(pins.get(), "sss", json_array_get(nested, 0));
        return json_take(json_pack("{s:O,s:O}", "t", json_object_get(content, "t"), "pins", pins.get()));
    }
    return json_take(json_object());
}

// The config for re-binding a tang JWE to the server's current keys, trusted through the old signing key:
// tangd signs /adv/{old thp} with the rotated-out key as well, and the old JWE's header holds that key.
// Returns {"url":..., "adv": <the verified current JWK set>}.
std::string rotated_config_from_old(std::string_view compact_jwe, const PinOptions& options) {
    JsonPtr header = header_of(compact_jwe);
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
    throw TangError("regen: cannot trust the current advertisement of " + url + " through the old signing key (" +
                    last_error + "); pass a config with \"thp\" (or trust-on-first-use)");
}

// The kernel registers the device-mapper misc device when dm_mod is loaded; a /dev/mapper/control node alone
// (e.g. in a container) does not mean it works.
bool device_mapper_available() {
    if (::access("/dev/mapper/control", F_OK) != 0) return false;
    std::ifstream misc("/proc/misc");
    if (!misc) return true;  // cannot tell: let libcryptsetup try
    std::string line;
    while (std::getline(misc, line))
        if (line.find("device-mapper") != std::string::npos) return true;
    return false;
}

}  // namespace

std::string token_json(int keyslot, std::string_view compact_jwe) {
    const detail::CompactJwe jwe = detail::split_compact_jwe(compact_jwe);
    auto part = [&](std::size_t i) { return json_stringn(jwe.parts[i].data(), jwe.parts[i].size()); };
    JsonPtr token = json_take(json_pack("{s:s,s:[s],s:{s:o,s:o,s:o,s:o,s:o}}", "type", "clevis", "keyslots",
                                        std::to_string(keyslot).c_str(), "jwe", "protected", part(0),
                                        "encrypted_key", part(1), "iv", part(2), "ciphertext", part(3), "tag",
                                        part(4)));
    if (!token) throw FormatError("cannot build the clevis token JSON");
    return detail::json_dump(token.get());
}

std::string token_to_compact(std::string_view token_text) {
    JsonPtr token = detail::json_parse(token_text, "clevis token");
    const json_t* jwe = json_object_get(token.get(), "jwe");
    if (!json_is_object(jwe)) throw FormatError("clevis token has no \"jwe\" object");
    std::string compact;
    const char* fields[] = {"protected", "encrypted_key", "iv", "ciphertext", "tag"};
    for (std::size_t i = 0; i < 5; ++i) {
        const json_t* value = json_object_get(jwe, fields[i]);
        if (value != nullptr && !json_is_string(value))
            throw FormatError(std::string("clevis token: jwe.") + fields[i] + " is not a string");
        if (value == nullptr && i != 1) throw FormatError(std::string("clevis token: jwe.") + fields[i] + " missing");
        if (i) compact += '.';
        if (value) compact.append(json_string_value(value), json_string_length(value));
    }
    return compact;
}

BindResult bind(Volume& volume, std::string_view pin, std::string_view config_json,
                std::string_view existing_passphrase, const BindOptions& options) {
    // Derive the volume key once, before any network work: a wrong passphrase fails early, and the new
    // keyslot is then added by volume key — exactly one (possibly slow, argon2id) derivation per bind.
    SecretBuffer volume_key;
    try {
        volume_key = volume.volume_key(existing_passphrase);
    } catch (const AuthError&) {
        throw AuthError("the existing passphrase opens no keyslot of " + volume.path().string());
    }
    return bind_impl(volume, pin, config_json, options, [&](std::string_view fresh, const Pbkdf& pbkdf, int slot) {
        return volume.add_keyslot_by_volume_key(fresh, pbkdf, slot, &volume_key);
    });
}

BindResult bind_with_volume_key(Volume& volume, std::string_view pin, std::string_view config_json,
                                const BindOptions& options, const SecretBuffer* volume_key) {
    return bind_impl(volume, pin, config_json, options, [&](std::string_view fresh, const Pbkdf& pbkdf, int slot) {
        return volume.add_keyslot_by_volume_key(fresh, pbkdf, slot, volume_key);
    });
}

Unlocked unlock(const Volume& volume, std::optional<int> keyslot, const PinOptions& options) {
    std::vector<Token> tokens = clevis_tokens(volume);
    if (keyslot) {
        std::erase_if(tokens, [&](const Token& t) { return token_keyslot(t) != *keyslot; });
        if (tokens.empty())
            throw NotFoundError("no Clevis token is bound to keyslot " + std::to_string(*keyslot) + " of " +
                                volume.path().string());
    }
    if (tokens.empty()) throw NotFoundError("no Clevis token on " + volume.path().string());

    std::string reasons;
    bool all_network = true;
    for (const Token& token : tokens) {
        const std::string who = "token " + std::to_string(token.id);
        try {
            const std::optional<int> slot = token_keyslot(token);
            if (token.keyslots.empty())
                throw NotFoundError("it names no keyslot (its keyslot was removed without the token)");
            if (!slot) throw FormatError("it names " + std::to_string(token.keyslots.size()) + " keyslots, not one");
            if (!volume.keyslot(*slot))
                throw NotFoundError("it names keyslot " + std::to_string(*slot) + ", which does not exist");
            SecretBuffer passphrase = clevis_decrypt(token_to_compact(token.json), options);
            if (volume.test_passphrase(passphrase.view(), *slot) != *slot)
                throw AuthError("the recovered passphrase does not open keyslot " + std::to_string(*slot));
            return Unlocked{token.id, *slot, std::move(passphrase)};
        } catch (const TangError& e) {
            reasons += (reasons.empty() ? "" : "; ") + who + ": " + e.what();
        } catch (const std::exception& e) {
            all_network = false;
            reasons += (reasons.empty() ? "" : "; ") + who + ": " + e.what();
        }
    }
    const std::string message = "no Clevis token opens its keyslot: " + reasons;
    if (all_network) throw TangError(message);
    throw AuthError(message);
}

void unbind(Volume& volume, int keyslot, bool force) {
    const std::optional<Token> token = token_for_keyslot(volume, keyslot);
    if (!token)
        throw NotFoundError("no Clevis token is bound to keyslot " + std::to_string(keyslot) + " of " +
                            volume.path().string());
    if (volume.keyslot(keyslot)) {
        const auto slots = volume.keyslots();
        if (slots.size() <= 1 && !force)
            throw FormatError("keyslot " + std::to_string(keyslot) +
                              " is the last keyslot: removing it would make the volume unopenable (use --force)");
    }
    // Token first: a token without its keyslot is the worse leftover (Clevis prunes such orphans itself).
    volume.remove_token(token->id);
    if (volume.keyslot(keyslot)) volume.remove_keyslot(keyslot);
}

std::pair<std::string, std::string> describe_jwe(std::string_view compact_jwe) {
    JsonPtr header = header_of(compact_jwe);
    std::string pin;
    JsonPtr config = pin_config(header.get(), pin);
    return {pin, detail::json_dump(config.get())};
}

std::vector<Binding> list(const Volume& volume) {
    std::vector<Binding> result;
    for (const Token& token : clevis_tokens(volume)) {
        Binding binding;
        binding.token = token.id;
        binding.keyslot = token_keyslot(token).value_or(-1);
        try {
            binding.jwe = token_to_compact(token.json);
            std::tie(binding.pin, binding.config) = describe_jwe(binding.jwe);
        } catch (const FormatError&) {
            binding.pin = "unknown";
        }
        result.push_back(std::move(binding));
    }
    std::sort(result.begin(), result.end(), [](const Binding& a, const Binding& b) { return a.keyslot < b.keyslot; });
    return result;
}

std::string format_binding(const Binding& binding) {
    return std::to_string(binding.keyslot) + ": " + binding.pin + " '" + binding.config + "'";
}

RegenResult regen(Volume& volume, int keyslot, const RegenOptions& options) {
    const std::optional<Token> old_token = token_for_keyslot(volume, keyslot);
    if (!old_token)
        throw NotFoundError("no Clevis token is bound to keyslot " + std::to_string(keyslot) + " of " +
                            volume.path().string());
    const auto [pin, old_config] = describe_jwe(token_to_compact(old_token->json));

    // Rotated Tang keys still answer /rec, so the old binding recovers its passphrase.
    Unlocked old = unlock(volume, keyslot, options.bind.pin);

    BindOptions bind_options = options.bind;
    bind_options.verify = true;
    std::string config = options.config_json.value_or(old_config);
    if (!options.config_json) {
        if (pin == "tang") {
            // Trust chain across rotation: the old advertisement (in the JWE header) names the old signing key;
            // tangd still signs /adv/{old thp} with it, vouching for the current keys.
            if (!options.bind.pin.trust_on_first_use)
                config = rotated_config_from_old(token_to_compact(old_token->json), options.bind.pin);
        } else {
            // Nested pins: trust the servers the binding already names, as `clevis luks regen` does.
            bind_options.pin.trust_on_first_use = true;
        }
    }
    RegenResult result;
    result.old_keyslot = keyslot;
    result.bound = clevis::bind(volume, pin, config, old.passphrase.view(), bind_options);
    if (result.bound.verification != Verification::verified) {
        roll_back(volume, result.bound.token, result.bound.keyslot);
        throw TangError("regen: the new binding could not be verified; the old binding in keyslot " +
                        std::to_string(keyslot) + " is kept (" + result.bound.message + ")");
    }
    // Only now the old binding goes: the volume always had a working one.
    unbind(volume, keyslot, true);
    return result;
}

void activate(Volume& volume, std::string_view name, const SecretBuffer& passphrase, int keyslot) {
    if (!device_mapper_available())
        throw Error(ENODEV, "cannot activate '" + std::string(name) +
                                "': device-mapper is not available in this kernel (dm_mod not loaded?)");
    auto guard = detail::cryptsetup_guard();
    detail::clear_crypt_error();
    const std::string mapped(name);
    detail::check_crypt(crypt_activate_by_passphrase(volume.native_handle(), mapped.c_str(), keyslot,
                                                     passphrase.chars(), passphrase.size(), 0),
                        "activating " + volume.path().string() + " as /dev/mapper/" + mapped);
}

}  // namespace luksforge::clevis
