// Internal: what bind, unbind and regen share — finding clevis tokens, the metadata-room check, Clevis's slot
// passphrase, the keyslot PBKDF Clevis would pick, and the test-only crash hook for kill -9 tests.
#pragma once

#include <luksforge/clevis.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/secret.hpp>

#include <optional>
#include <string>
#include <vector>

namespace luksforge::clevis::internal {

// Clevis makes the slot passphrase as the "k" of a 40-byte random oct JWK: 54 base64url characters.
SecretBuffer new_slot_passphrase();

// The keyslot a clevis token names (Clevis binds one keyslot per token), or nullopt.
std::optional<int> token_keyslot(const Token& token);
std::vector<Token> clevis_tokens(const Volume& volume);
std::optional<Token> token_for_keyslot(const Volume& volume, int keyslot);
// Some token (of any type) names `keyslot`.
bool keyslot_served(const Volume& volume, int keyslot);

// Refuse (FormatError) before writing anything when `added_bytes` more of LUKS2 JSON (tokens, keyslots)
// would not fit the metadata area; `freed_bytes` are released by the same operation (a replaced token).
void check_metadata_room(const Volume& volume, std::size_t added_bytes, std::size_t freed_bytes = 0);
// What a new keyslot adds to the compact LUKS2 JSON (measured ~310 bytes for pbkdf2; 400 leaves room).
constexpr std::size_t keyslot_json_bytes = 400;

// The pbkdf2 hash a Clevis keyslot gets on this volume: the first pbkdf2 keyslot's hash, else the volume-key
// digest's (upstream Clevis, clevis_luks_get_hash: a sha512 volume gets a sha512 keyslot).
std::string volume_pbkdf_hash(const Volume& volume);
// `pbkdf` with an empty pbkdf2 hash filled in from the volume.
Pbkdf resolved_pbkdf(const Volume& volume, Pbkdf pbkdf);

// Remove what a failed bind added, the keyslot first (a crash in between leaves a token naming no keyslot,
// which prune_orphaned_tokens() removes, never a keyslot nobody can open). Never throws.
void roll_back(Volume& volume, int token, int keyslot) noexcept;
// Remove clevis tokens assigned to no keyslot, as Clevis does before every bind (clevis_luks2_save_slot).
// Returns their ids.
std::vector<int> prune_orphaned_tokens(Volume& volume);

// bind's intent record (bind_record.cpp): a "luksforge-bind" token holding the keyslot about to be added and
// its JWE, written before the keyslot and replaced in place by the clevis token.
// The digest of a bind request (pin and config): a rerun of the same bind recognises its own record.
std::string bind_request_digest(std::string_view pin, std::string_view config_json);
std::string bind_record_json(int keyslot, std::string_view compact_jwe, const std::string& request);
struct SettledBind {
    BindResult result;
    std::string request;
};
// Settle every bind record on the volume (see bind_record.cpp): finish what is proven luksforge's own, drop
// what is not, leave what cannot be decided without the server(s). `current_request` is the bind running now
// (nullptr for unbind, regen): for it an undecidable record throws TangError (or, without `current_verify`,
// is finished unproven). Returns the binds finished.
std::vector<SettledBind> settle_interrupted_binds(Volume& volume, const PinOptions& options,
                                                  const std::string* current_request = nullptr,
                                                  bool current_verify = true);
// The id of the bind record naming `keyslot`, if any.
std::optional<int> bind_record_for_keyslot(const Volume& volume, int keyslot);

// describe_jwe() keeping every sss child (Clevis's list drops some): the config regen re-binds.
std::pair<std::string, std::string> describe_jwe_faithful(std::string_view compact_jwe);

// LUKS1: the Clevis JWEs in luksmeta slots (slot number = keyslot). `problem` says why one is unreadable.
struct LuksmetaBinding {
    int keyslot = -1;
    std::string jwe;
    std::string problem;
};
std::vector<LuksmetaBinding> luksmeta_bindings(const Volume& volume);
// Why a LUKS1 volume cannot be written, and the conversion path that works (luksmeta blocks cryptsetup convert).
std::string luks1_refusal(const Volume& volume);

// Test-only: SIGKILL this process when $LUKSFORGE_CRASH_AT names `step` (the crash tests' hook). The steps of
// bind, unbind and regen are listed by bind_crash_points(), unbind_crash_points(), regen_crash_points().
void crash_point(const char* step);

// Prove a binding: `jwe` decrypts through the pin's server(s) to `passphrase`, which opens `keyslot`.
// Throws AuthError/TangError/FormatError with the reason.
void prove_binding(const Volume& volume, std::string_view jwe, const SecretBuffer& passphrase, int keyslot,
                   const PinOptions& options);

}  // namespace luksforge::clevis::internal
