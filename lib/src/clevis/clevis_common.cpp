// What bind, unbind and regen share (clevis_internal.hpp).
#include "clevis/clevis_internal.hpp"

#include "util/cryptsetup_util.hpp"
#include "util/json_util.hpp"

#include <luksforge/error.hpp>
#include <luksforge/pin.hpp>

#include <libcryptsetup.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

namespace luksforge::clevis::internal {

using luksforge::detail::JsonPtr;

SecretBuffer new_slot_passphrase() {
    SecretBuffer raw = random_secret(40);
    return base64url_encode(raw.bytes());
}

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

bool keyslot_served(const Volume& volume, int keyslot) {
    for (const Token& token : volume.tokens())
        if (std::find(token.keyslots.begin(), token.keyslots.end(), keyslot) != token.keyslots.end()) return true;
    return false;
}

namespace {

JsonPtr header_json(const Volume& volume) {
    auto guard = luksforge::detail::cryptsetup_guard();
    const char* json = nullptr;
    luksforge::detail::check_crypt(crypt_dump_json(volume.native_handle(), &json, 0), "reading the LUKS2 metadata");
    if (json == nullptr) throw FormatError("no LUKS2 metadata in " + volume.path().string());
    return luksforge::detail::json_parse(json, "LUKS2 metadata");
}

}  // namespace

void check_metadata_room(const Volume& volume, std::size_t added_bytes, std::size_t freed_bytes) {
    std::uint64_t metadata_size = 0, keyslots_size = 0;
    {
        auto guard = luksforge::detail::cryptsetup_guard();
        luksforge::detail::check_crypt(crypt_get_metadata_size(volume.native_handle(), &metadata_size, &keyslots_size),
                                       "reading the LUKS2 metadata size");
    }
    // crypt_dump_json() re-serialises with spacing (~50 % longer); the area holds the compact text, which is
    // exactly jansson's compact form of it (checked against the on-disk bytes).
    const std::size_t used = luksforge::detail::json_dump(header_json(volume).get()).size();
    // The metadata area holds the 4 KiB binary header and the JSON text (NUL-terminated).
    const std::size_t capacity = metadata_size > 4096 ? metadata_size - 4096 - 1 : 0;
    const std::size_t after = used + added_bytes + 16 - std::min(freed_bytes, used);
    if (after > capacity)
        throw FormatError("the Clevis token and its keyslot do not fit the LUKS2 metadata: " + std::to_string(used) +
                          " of " + std::to_string(capacity) + " JSON bytes used, about " + std::to_string(after) +
                          " needed; format with a larger metadata area (e.g. --metadata-size 64K)");
}

std::string volume_pbkdf_hash(const Volume& volume) {
    for (const Keyslot& slot : volume.keyslots())
        if (slot.pbkdf.type == Pbkdf::Type::pbkdf2 && !slot.pbkdf.hash.empty()) return slot.pbkdf.hash;
    // No pbkdf2 keyslot (argon2 slots have no PBKDF hash): the volume-key digest's hash, as luksDump's first
    // "Hash:" line gives it to Clevis.
    JsonPtr header = header_json(volume);
    const char* key;
    json_t* digest;
    json_object_foreach(json_object_get(header.get(), "digests"), key, digest) {
        const std::string hash = luksforge::detail::json_string_or(digest, "hash");
        if (!hash.empty()) return hash;
    }
    return "sha256";
}

Pbkdf resolved_pbkdf(const Volume& volume, Pbkdf pbkdf) {
    if (pbkdf.type == Pbkdf::Type::pbkdf2 && pbkdf.hash.empty()) pbkdf.hash = volume_pbkdf_hash(volume);
    return pbkdf;
}

void roll_back(Volume& volume, int token, int keyslot) noexcept {
    try {
        if (keyslot >= 0 && volume.keyslot(keyslot)) volume.remove_keyslot(keyslot);
    } catch (...) {
    }
    try {
        if (token >= 0 && volume.token(token)) volume.remove_token(token);
    } catch (...) {
    }
}

std::vector<int> prune_orphaned_tokens(Volume& volume) {
    std::vector<int> removed;
    for (const Token& token : clevis_tokens(volume)) {
        if (!token.keyslots.empty()) continue;
        volume.remove_token(token.id);
        removed.push_back(token.id);
    }
    return removed;
}

void crash_point(const char* step) {
    const char* wanted = std::getenv("LUKSFORGE_CRASH_AT");
    if (wanted != nullptr && std::strcmp(wanted, step) == 0) ::kill(::getpid(), SIGKILL);
}

void prove_binding(const Volume& volume, std::string_view jwe, const SecretBuffer& passphrase, int keyslot,
                   const PinOptions& options) {
    SecretBuffer recovered = clevis_decrypt(jwe, options);
    if (!recovered.equals(passphrase.bytes()))
        throw AuthError("verification failed: the token decrypts to another passphrase");
    if (volume.test_passphrase(recovered.view(), keyslot) != keyslot)
        throw AuthError("verification failed: the recovered passphrase does not open keyslot " +
                        std::to_string(keyslot));
}

}  // namespace luksforge::clevis::internal
