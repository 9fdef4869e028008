// Clevis LUKS2 bindings: bind/unlock/list over the `clevis` token Clevis writes (clevis-luks-common-functions:
// clevis_luks2_save_slot, clevis_luks_add_key, clevis_luks_print_pin_config). unbind.cpp and regen.cpp hold
// the crash-safe removal and regeneration.
#include "clevis/clevis_internal.hpp"
#include "clevis/pin_round_trips.hpp"

#include <luksforge/clevis.hpp>

#include "util/cryptsetup_util.hpp"
#include "util/jose_util.hpp"
#include "util/json_util.hpp"

#include <luksforge/error.hpp>
#include <luksforge/secret.hpp>
#include <luksforge/tang.hpp>

#include <libcryptsetup.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <linux/keyctl.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace luksforge::clevis {

using namespace clevis::internal;

namespace {

using detail::JsonPtr;
using detail::json_take;

int first_free_keyslot(const Volume& volume) {
    for (int slot = 0; slot < 32; ++slot)
        if (!volume.keyslot(slot)) return slot;
    throw FormatError("all 32 keyslots of " + volume.path().string() + " are in use");
}

// `encryption` has been running since the caller started it (pin_round_trips.hpp); the header is written only
// once it succeeded.
template <typename AddKeyslot>
BindResult bind_impl(Volume& volume, std::string_view pin, std::string_view config_json, const BindOptions& options,
                     PendingEncryption& encryption, AddKeyslot add_keyslot) {
    if (volume.luks_version() != 2) throw FormatError(internal::luks1_refusal(volume));
    // An earlier bind killed between its keyslot and its token (bind_record.cpp): finished or dropped first;
    // when it was this very bind, its result is the answer.
    const std::string request = bind_request_digest(pin, config_json);
    for (SettledBind& settled : settle_interrupted_binds(volume, options.pin, &request, options.verify))
        if (settled.request == request && (options.keyslot < 0 || options.keyslot == settled.result.keyslot))
            return std::move(settled.result);
    if (options.keyslot >= 0 && volume.keyslot(options.keyslot))
        throw FormatError("keyslot " + std::to_string(options.keyslot) + " is already in use");
    if (options.token_id >= 0 && volume.token(options.token_id))
        throw FormatError("token " + std::to_string(options.token_id) + " is already in use");

    const SecretBuffer& passphrase = encryption.passphrase();
    // Encrypted before any write: network and trust failures leave the header untouched.
    const std::string jwe = encryption.get();
    const int slot = options.keyslot >= 0 ? options.keyslot : first_free_keyslot(volume);
    const std::string record = bind_record_json(slot, jwe, request);
    // The record, then the keyslot beside it, then the token in the record's place: the peak is record + keyslot.
    check_metadata_room(volume, std::max(record.size(), token_json(slot, jwe).size()) + keyslot_json_bytes);
    const Pbkdf pbkdf = resolved_pbkdf(volume, options.pbkdf);

    // The proof's recovery goes through the pin while the record, keyslot and token are written.
    std::optional<PendingProof> proof;
    if (options.verify) proof.emplace(jwe, options.pin);

    BindResult result;
    result.token = volume.set_token(record, options.token_id);
    crash_point("bind-record-written");
    try {
        result.keyslot = add_keyslot(passphrase.view(), pbkdf, slot);
        crash_point("bind-keyslot-added");
        volume.set_token(token_json(result.keyslot, jwe), result.token);
        crash_point("bind-token-written");
    } catch (...) {
        roll_back(volume, result.token, result.keyslot);  // the keyslot first: a kill in between leaves the record only
        throw;
    }

    const std::string bound = "bound keyslot " + std::to_string(result.keyslot) + " (token " +
                              std::to_string(result.token) + ")";
    if (!options.verify) {
        result.verification = Verification::skipped;
        result.message = bound + "; NOT verified: the proof through the server was skipped on request";
        return result;
    }
    // Through the real server: the token as stored is the JWE the pin recovered the slot passphrase from, and
    // that passphrase opens the new keyslot. Any failure — the server unreachable or slow included — removes
    // the binding again: nobody checked it.
    try {
        const std::optional<Token> stored = volume.token(result.token);
        if (!stored) throw Error(EIO, "the new token vanished");
        proof->finish(volume, token_to_compact(stored->json), passphrase, result.keyslot);
    } catch (const TangError& e) {
        roll_back(volume, result.token, result.keyslot);
        throw TangError(std::string("binding removed again: it could not be proven through the server (") +
                            e.what() + "); bind when the server answers, or pass --no-verify to keep an unproven binding",
                        e.code().value());
    } catch (...) {
        roll_back(volume, result.token, result.keyslot);
        throw;
    }
    result.verification = Verification::verified;
    result.message = bound + "; verified: the stored token decrypts through its pin (the real servers) and opens its keyslot";
    return result;
}

JsonPtr header_of(std::string_view compact_jwe) {
    const detail::CompactJwe jwe = detail::split_compact_jwe(compact_jwe);
    return detail::decode_b64_json(jwe.protected_b64(), "JWE protected header");
}

// Pins whose config `clevis luks list` can show; anything else is "unknown pin 'NAME'".
bool listable_pin(std::string_view pin) {
    return pin == "tang" || pin == "sss" || pin == "tpm2" || pin == "tpm1" || pin == "null" || pin == "pkcs11";
}

// The config object Clevis shows for one pin (clevis_luks_print_pin_config). With `faithful` (regen), sss keeps
// every child: Clevis's list drops children of unknown pins and all nested sss children but the last one.
JsonPtr pin_config(const json_t* header, std::string& pin, bool faithful) {
    const json_t* clevis = json_object_get(header, "clevis");
    pin = detail::json_string_or(clevis, "pin");
    if (pin.empty()) throw FormatError("the JWE header names no clevis pin (clevis.pin)");
    const json_t* content = json_object_get(clevis, pin.c_str());
    if (!json_is_object(content))
        throw FormatError("the JWE header has no configuration for its pin (clevis." + pin.substr(0, 40) + ")");
    if (pin == "tang") return json_take(json_pack("{s:s}", "url", detail::json_string_or(content, "url").c_str()));
    if (pin == "null") return json_take(json_object());
    if (pin == "tpm2" || pin == "tpm1" || pin == "pkcs11") {
        // Clevis prints the string-valued members it knows, in this order.
        static const std::vector<const char*> tpm2 = {"hash", "key", "pcr_bank", "pcr_ids", "pcr_digest"};
        static const std::vector<const char*> tpm1 = {"pcr_ids"};
        static const std::vector<const char*> pkcs11 = {"uri", "mechanism"};
        JsonPtr config = json_take(json_object());
        for (const char* key : pin == "tpm2" ? tpm2 : pin == "tpm1" ? tpm1 : pkcs11)
            if (const json_t* v = json_object_get(content, key); json_is_string(v))
                json_object_set(config.get(), key, const_cast<json_t*>(v));
        return config;
    }
    if (pin == "sss") {
        const json_t* t = json_object_get(content, "t");
        if (!json_is_integer(t)) throw FormatError("the sss JWE header has no integer threshold \"t\"");
        // Children grouped by pin in Clevis's order; every child JWE is described recursively.
        std::vector<std::pair<std::string, JsonPtr>> children;
        std::size_t index;
        json_t* child;
        json_array_foreach(json_object_get(content, "jwe"), index, child) {
            if (!json_is_string(child)) continue;
            std::string child_pin;
            JsonPtr child_config;
            try {
                JsonPtr child_header = header_of(json_string_value(child));
                child_config = pin_config(child_header.get(), child_pin, faithful);
            } catch (const FormatError&) {
                continue;  // as clevis: undecodable children are skipped
            }
            if (!faithful && !listable_pin(child_pin)) continue;
            children.emplace_back(std::move(child_pin), std::move(child_config));
        }
        JsonPtr pins = json_take(json_object());
        std::vector<std::string> order = {"null", "tang", "tpm1", "tpm2", "pkcs11"};
        for (const auto& [name, config] : children)
            if (std::find(order.begin(), order.end(), name) == order.end() && name != "sss") order.push_back(name);
        for (const std::string& name : order) {
            JsonPtr list = json_take(json_array());
            for (const auto& [child_name, config] : children)
                if (child_name == name) json_array_append(list.get(), config.get());
            if (json_array_size(list.get()) > 0) json_object_set(pins.get(), name.c_str(), list.get());
        }
        // Nested sss: Clevis shows one object (the last); regen keeps all (an array when there are several).
        JsonPtr nested = json_take(json_array());
        for (const auto& [child_name, config] : children)
            if (child_name == "sss") json_array_append(nested.get(), config.get());
        const std::size_t count = json_array_size(nested.get());
        if (count == 1 || (count > 1 && !faithful))
            json_object_set(pins.get(), "sss", json_array_get(nested.get(), count - 1));
        else if (count > 1)
            json_object_set(pins.get(), "sss", nested.get());
        return json_take(json_pack("{s:O,s:O}", "t", t, "pins", pins.get()));
    }
    return json_take(json_object());
}

// Every pin a JWE uses, nested sss children included (clevis_luks_decode_used_pins).
void used_pins(const json_t* header, std::vector<std::string>& pins) {
    const json_t* clevis = json_object_get(header, "clevis");
    const std::string pin = detail::json_string_or(clevis, "pin");
    if (pin.empty()) return;
    pins.push_back(pin);
    if (pin != "sss") return;
    std::size_t index;
    json_t* child;
    json_array_foreach(json_object_get(json_object_get(clevis, "sss"), "jwe"), index, child) {
        if (!json_is_string(child)) continue;
        try {
            JsonPtr child_header = header_of(json_string_value(child));
            used_pins(child_header.get(), pins);
        } catch (const FormatError&) {
        }
    }
}

// The payload of a "user" key in the kernel keyring (what a luks2-keyring token's key_description names).
SecretBuffer read_user_key(const std::string& description) {
    const long serial = ::syscall(SYS_request_key, "user", description.c_str(), nullptr, 0);
    if (serial < 0)
        throw NotFoundError("no user key '" + description.substr(0, 64) + "' in the kernel keyring: " +
                            std::strerror(errno));
    const long size = ::syscall(SYS_keyctl, KEYCTL_READ, serial, nullptr, 0);
    if (size < 0) throw Error(errno, "cannot read key '" + description.substr(0, 64) + "' from the kernel keyring");
    SecretBuffer key(static_cast<std::size_t>(size));
    const long read = ::syscall(SYS_keyctl, KEYCTL_READ, serial, key.chars(), key.size());
    if (read < 0 || read > size) throw Error(errno, "cannot read key '" + description.substr(0, 64) + "'");
    key.resize(static_cast<std::size_t>(read));
    return key;
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
        if (value && !is_base64url({json_string_value(value), json_string_length(value)}))
            throw FormatError(std::string("clevis token: jwe.") + fields[i] + " is not base64url");
        if (i) compact += '.';
        if (value) compact.append(json_string_value(value), json_string_length(value));
    }
    return compact;
}

std::vector<std::string> bind_crash_points() {
    return {"bind-record-written", "bind-keyslot-added", "bind-token-written"};
}

BindResult bind(Volume& volume, std::string_view pin, std::string_view config_json,
                std::string_view existing_passphrase, const BindOptions& options) {
    // The pin's encryption (the advertisement's round trip) runs while the volume key is derived, once: the new
    // keyslot is added by volume key — exactly one (possibly slow, argon2id) derivation per bind. A wrong
    // passphrase cancels the encryption and is the error reported.
    PendingEncryption encryption(pin, config_json, options.pin);
    SecretBuffer volume_key;
    try {
        volume_key = volume.volume_key(existing_passphrase);
    } catch (const AuthError&) {
        throw AuthError("the existing passphrase opens no keyslot of " + volume.path().string());
    }
    return bind_impl(volume, pin, config_json, options, encryption, [&](std::string_view fresh, const Pbkdf& pbkdf, int slot) {
        return volume.add_keyslot_by_volume_key(fresh, pbkdf, slot, &volume_key);
    });
}

BindResult bind_with_volume_key(Volume& volume, std::string_view pin, std::string_view config_json,
                                const BindOptions& options, const SecretBuffer* volume_key) {
    PendingEncryption encryption(pin, config_json, options.pin);
    return bind_impl(volume, pin, config_json, options, encryption, [&](std::string_view fresh, const Pbkdf& pbkdf, int slot) {
        return volume.add_keyslot_by_volume_key(fresh, pbkdf, slot, volume_key);
    });
}

namespace {

// unlock() over LUKS1 luksmeta bindings: the same rules, slot by slot.
Unlocked unlock_luksmeta(const Volume& volume, std::optional<int> keyslot, const PinOptions& options) {
    std::vector<LuksmetaBinding> bindings = luksmeta_bindings(volume);
    if (keyslot) std::erase_if(bindings, [&](const LuksmetaBinding& b) { return b.keyslot != *keyslot; });
    if (bindings.empty())
        throw NotFoundError(keyslot ? "no Clevis binding in luksmeta slot " + std::to_string(*keyslot) + " of " +
                                          volume.path().string()
                                    : "no Clevis binding (luksmeta) on " + volume.path().string());
    std::string reasons;
    bool all_network = true;
    for (const LuksmetaBinding& b : bindings) {
        try {
            if (!b.problem.empty()) throw FormatError(b.problem);
            if (!volume.keyslot(b.keyslot))
                throw NotFoundError("keyslot " + std::to_string(b.keyslot) + " does not exist");
            SecretBuffer passphrase = clevis_decrypt(b.jwe, options);
            if (volume.test_passphrase(passphrase.view(), b.keyslot) != b.keyslot)
                throw AuthError("the recovered passphrase does not open keyslot " + std::to_string(b.keyslot));
            return Unlocked{-1, b.keyslot, std::move(passphrase)};
        } catch (const TangError& e) {
            reasons += (reasons.empty() ? "" : "; ") + std::string("luksmeta slot ") + std::to_string(b.keyslot) +
                       ": " + e.what();
        } catch (const std::exception& e) {
            all_network = false;
            reasons += (reasons.empty() ? "" : "; ") + std::string("luksmeta slot ") + std::to_string(b.keyslot) +
                       ": " + e.what();
        }
    }
    const std::string message = "no Clevis binding opens its keyslot: " + reasons;
    if (all_network) throw TangError(message);
    throw AuthError(message);
}

}  // namespace

Volume open_for_bindings(const std::filesystem::path& device, Volume::Access access) {
    try {
        return Volume::open(device, access);
    } catch (const FormatError&) {
        std::optional<Volume> probed = Volume::probe(device);
        if (!probed || probed->luks_version() != 1) throw;
        if (access == Volume::Access::read_write) throw FormatError(luks1_refusal(*probed));
        return std::move(*probed);
    }
}

Unlocked unlock(const Volume& volume, std::optional<int> keyslot, const PinOptions& options) {
    if (volume.luks_version() == 1) return unlock_luksmeta(volume, keyslot, options);
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

std::pair<std::string, std::string> describe_jwe(std::string_view compact_jwe) {
    JsonPtr header = header_of(compact_jwe);
    std::string pin;
    JsonPtr config = pin_config(header.get(), pin, false);
    return {pin, detail::json_dump(config.get())};
}

std::pair<std::string, std::string> internal::describe_jwe_faithful(std::string_view compact_jwe) {
    JsonPtr header = header_of(compact_jwe);
    std::string pin;
    JsonPtr config = pin_config(header.get(), pin, true);
    return {pin, detail::json_dump(config.get())};
}

std::vector<Binding> list(const Volume& volume) {
    std::vector<Binding> result;
    if (volume.luks_version() == 1) {
        for (const LuksmetaBinding& b : luksmeta_bindings(volume)) {
            Binding binding;
            binding.keyslot = b.keyslot;
            binding.problem = b.problem;
            try {
                if (!b.problem.empty()) throw FormatError(b.problem);
                binding.jwe = b.jwe;
                std::tie(binding.pin, binding.config) = describe_jwe(binding.jwe);
                JsonPtr header = header_of(binding.jwe);
                used_pins(header.get(), binding.pins);
                std::sort(binding.pins.begin(), binding.pins.end());
                binding.pins.erase(std::unique(binding.pins.begin(), binding.pins.end()), binding.pins.end());
            } catch (const FormatError& e) {
                binding.pin.clear();
                binding.config.clear();
                binding.problem = e.what();
            }
            result.push_back(std::move(binding));
        }
        return result;
    }
    for (const Token& token : clevis_tokens(volume)) {
        Binding binding;
        binding.token = token.id;
        binding.keyslot = token_keyslot(token).value_or(-1);
        try {
            if (token.keyslots.empty()) throw FormatError("it names no keyslot");
            if (token.keyslots.size() > 1)
                throw FormatError("it names " + std::to_string(token.keyslots.size()) + " keyslots, not one");
            binding.jwe = token_to_compact(token.json);
            std::tie(binding.pin, binding.config) = describe_jwe(binding.jwe);
            JsonPtr header = header_of(binding.jwe);
            used_pins(header.get(), binding.pins);
            std::sort(binding.pins.begin(), binding.pins.end());
            binding.pins.erase(std::unique(binding.pins.begin(), binding.pins.end()), binding.pins.end());
        } catch (const FormatError& e) {
            binding.pin.clear();
            binding.config.clear();
            binding.problem = e.what();
        }
        result.push_back(std::move(binding));
    }
    std::sort(result.begin(), result.end(), [](const Binding& a, const Binding& b) { return a.keyslot < b.keyslot; });
    return result;
}

std::string format_binding(const Binding& binding) {
    const std::string slot = std::to_string(binding.keyslot) + ": ";
    if (!binding.problem.empty()) return slot + "unreadable token " + std::to_string(binding.token) + ": " + binding.problem;
    if (!listable_pin(binding.pin)) return slot + "unknown pin '" + binding.pin.substr(0, 64) + "'";
    return slot + binding.pin + " '" + binding.config + "'";
}

SecretBuffer existing_token_passphrase(const Volume& volume, int token_id, const PinOptions& options) {
    const std::optional<Token> token = volume.token(token_id);
    if (!token) throw NotFoundError("token " + std::to_string(token_id) + " does not exist in " + volume.path().string());
    if (token->type == "clevis") {
        const std::optional<int> slot = token_keyslot(*token);
        if (!slot) throw FormatError("clevis token " + std::to_string(token_id) + " does not name exactly one keyslot");
        Unlocked unlocked = unlock(volume, *slot, options);
        if (unlocked.token != token_id)
            throw AuthError("clevis token " + std::to_string(token_id) + " does not open its keyslot");
        return std::move(unlocked.passphrase);
    }
    if (token->type == "luks2-keyring") {
        JsonPtr json = detail::json_parse(token->json, "luks2-keyring token");
        const std::string description = detail::json_string_or(json.get(), "key_description");
        if (description.empty()) throw FormatError("luks2-keyring token " + std::to_string(token_id) + " has no key_description");
        return read_user_key(description);
    }
    throw FormatError("token " + std::to_string(token_id) + " is of type '" + token->type.substr(0, 64) +
                      "': only clevis and luks2-keyring tokens can supply the existing passphrase");
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
