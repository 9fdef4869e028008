// Clevis LUKS2 bindings: the `clevis` token Clevis itself writes
//   {"type":"clevis","keyslots":["N"],"jwe":{"protected":...,"encrypted_key":"","iv":...,"ciphertext":...,"tag":...}}
// holding a pin's JWE of a random keyslot passphrase. Stock Clevis unlocks what bind() writes, and unlock()
// opens what `clevis luks bind` writes.
#pragma once

#include <luksforge/luks.hpp>
#include <luksforge/pin.hpp>
#include <luksforge/secret.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace luksforge::clevis {

struct BindOptions {
    PinOptions pin;
    int keyslot = -1;                                 // keyslot for the binding; -1 = first free
    Pbkdf pbkdf = Pbkdf::pbkdf2_fast(1000);           // a 320-bit random passphrase needs no slow PBKDF
    bool verify = true;                               // decrypt through the real server and test the slot
};

enum class Verification {
    verified,            // the token was decrypted through the pin's server(s) and opened its keyslot
    skipped,             // verify was off
    server_unreachable,  // offline advertisement and the server could not be reached: NOT verified
};

struct BindResult {
    int keyslot = -1;
    int token = -1;
    Verification verification = Verification::skipped;
    std::string message;                              // one line for humans about the verification
};

// Bind with an existing passphrase of the volume (one PBKDF derivation of its slot).
BindResult bind(Volume& volume, std::string_view pin, std::string_view config_json,
                std::string_view existing_passphrase, const BindOptions& options = {});
// Bind using the volume key right after Volume::format() (null) or a given volume key: no PBKDF at all.
BindResult bind_with_volume_key(Volume& volume, std::string_view pin, std::string_view config_json,
                                const BindOptions& options = {}, const SecretBuffer* volume_key = nullptr);

struct Unlocked {
    int token = -1;
    int keyslot = -1;
    SecretBuffer passphrase;
};
// Try the clevis tokens (only the one bound to `keyslot` when given) and return the first whose recovered
// passphrase opens its own keyslot. Throws NotFoundError when there is no such token, otherwise an error
// listing every token's failure (TangError when all failed on the network, AuthError else).
Unlocked unlock(const Volume& volume, std::optional<int> keyslot = std::nullopt, const PinOptions& options = {});

// Remove the token bound to `keyslot` and the keyslot itself. Refuses to remove the last keyslot unless
// `force`. Throws NotFoundError when no clevis token is bound to it.
void unbind(Volume& volume, int keyslot, bool force = false);

struct Binding {
    int token = -1;
    int keyslot = -1;
    std::string pin;                  // "tang", "sss", ...
    std::string config;               // the config as `clevis luks list` shows it, e.g. {"url":"http://..."}
    std::string jwe;                  // compact
};
// Every clevis token, ordered by keyslot. Prints like `clevis luks list` with format_binding().
std::vector<Binding> list(const Volume& volume);
// "1: tang '{"url":"http://..."}'"
std::string format_binding(const Binding& binding);
// The pin and the config Clevis shows for a compact JWE (sss rebuilt recursively, as clevis does).
std::pair<std::string, std::string> describe_jwe(std::string_view compact_jwe);

struct RegenOptions {
    BindOptions bind;                 // bind.keyslot: the new binding's keyslot (-1 = first free)
    // Replace the config reconstructed from the old JWE (e.g. to pin the new key with "thp").
    std::optional<std::string> config_json;
};
struct RegenResult {
    int old_keyslot = -1;
    BindResult bound;                 // the new binding
};
// Re-bind after a Tang key rotation: recover the old binding's passphrase, bind a NEW keyslot to the current
// advertisement, verify it, and only then remove the old token and keyslot — the volume never lacks a
// working binding (the binding moves to a new keyslot). Without `config_json`, a tang binding pins the OLD
// signing key (from the advertisement in its JWE): tangd signs /adv/{old thp} with it after rotation, so the
// new keys are trusted through the old one. sss bindings trust their servers as `clevis luks regen` does.
RegenResult regen(Volume& volume, int keyslot, const RegenOptions& options = {});

// Open the volume as /dev/mapper/NAME through dm-crypt with a passphrase (e.g. Unlocked::passphrase).
void activate(Volume& volume, std::string_view name, const SecretBuffer& passphrase, int keyslot = -1);

// Token JSON <-> compact JWE in Clevis's exact layout (encrypted_key kept, possibly empty).
std::string token_json(int keyslot, std::string_view compact_jwe);
std::string token_to_compact(std::string_view token_json);

}  // namespace luksforge::clevis
