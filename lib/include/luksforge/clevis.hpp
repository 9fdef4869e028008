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

// Open a volume for the Clevis commands: LUKS2 as Volume::open() does; a LUKS1 volume read-only, for its
// luksmeta Clevis bindings (list, unlock, pass read them). Opening LUKS1 read-write (to write a binding, or to
// activate it: `unlock --name`) throws FormatError naming the bound slots, what works on LUKS1 and the
// conversion path (luksmeta headers block `cryptsetup convert`).
Volume open_for_bindings(const std::filesystem::path& device, Volume::Access access);

struct BindOptions {
    PinOptions pin;
    int keyslot = -1;                                 // keyslot for the binding; -1 = first free
    int token_id = -1;                                // token id for the binding (clevis -t); -1 = first free
    // A 320-bit random passphrase needs no slow PBKDF: pbkdf2 at 1000 iterations, as Clevis. An empty pbkdf2
    // hash takes the volume's (as upstream Clevis: a sha512 volume gets a sha512 keyslot).
    Pbkdf pbkdf = {Pbkdf::Type::pbkdf2, "", 1000, 0, 0, 0};
    // Decrypt the stored token through the real server(s) and open the new keyslot with the result. When this
    // proof fails for any reason (server down or slow included) the binding is removed again and bind throws.
    bool verify = true;
};

enum class Verification {
    verified,            // the token was decrypted through the pin's server(s) and opened its keyslot
    skipped,             // verify was off (explicitly): NOT verified
};

struct BindResult {
    int keyslot = -1;
    int token = -1;
    Verification verification = Verification::skipped;
    std::string message;                              // one line for humans about the verification
};

// Bind with an existing passphrase of the volume (one PBKDF derivation of its slot).
// Crash-safe (docs/hardening.md, "bind's intent record"): a keyslot-less "luksforge-bind" record naming the new
// keyslot and holding its JWE is written first and becomes the clevis token in one write. bind, unbind and regen
// settle records left by a kill: a keyslot the recorded JWE opens (through its server) gets its token; the same
// bind again then returns that binding. Nothing unproven is destroyed.
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
// The passphrase an existing token of the volume gives (clevis -e TOKEN_ID): a clevis token's recovered
// passphrase (it must open its keyslot), or a luks2-keyring token's key from the kernel keyring.
SecretBuffer existing_token_passphrase(const Volume& volume, int token_id, const PinOptions& options = {});

// Try the clevis tokens (only the one bound to `keyslot` when given) and return the first whose recovered
// passphrase opens its own keyslot. Throws NotFoundError when there is no such token, otherwise an error
// listing every token's failure (TangError when all failed on the network, AuthError else).
Unlocked unlock(const Volume& volume, std::optional<int> keyslot = std::nullopt, const PinOptions& options = {});

// Remove the token bound to `keyslot` and the keyslot itself. Refuses to remove the last keyslot unless
// `force`. Throws NotFoundError when no clevis token is bound to it.
// Crash-safe: the keyslot goes first, then its token (then left naming no keyslot). A rerun after a kill in
// between finds no binding for `keyslot`, removes the clevis tokens that name no keyslot (as Clevis prunes
// them) and succeeds.
void unbind(Volume& volume, int keyslot, bool force = false);
// The test-only crash points of bind, unbind and regen (LUKSFORGE_CRASH_AT=<step> kills the process there).
std::vector<std::string> bind_crash_points();
std::vector<std::string> unbind_crash_points();
std::vector<std::string> regen_crash_points();

struct Binding {
    int token = -1;
    int keyslot = -1;                 // -1 when the token names no keyslot or several
    // token: the LUKS2 token id; -1 on LUKS1, where the JWE lives in luksmeta slot `keyslot`.
    std::string pin;                  // "tang", "sss", ...; empty when the token is unreadable (see problem)
    std::string config;               // the config as `clevis luks list` shows it, e.g. {"url":"http://..."}
    std::string jwe;                  // compact
    std::string problem;              // why the token cannot be listed (malformed JSON/JWE/header); else empty
    std::vector<std::string> pins;    // every pin used, nested ones included, sorted, unique (`list -p`)
};
// Every clevis token, ordered by keyslot. Prints like `clevis luks list` with format_binding(); tokens with
// a problem are listed too (Clevis skips them silently).
std::vector<Binding> list(const Volume& volume);
// "1: tang '{"url":"http://..."}'"; an unknown pin: "1: unknown pin 'NAME'" (as Clevis).
std::string format_binding(const Binding& binding);
// The pin and the config Clevis shows for a compact JWE (sss rebuilt recursively, as clevis does).
std::pair<std::string, std::string> describe_jwe(std::string_view compact_jwe);

struct RegenOptions {
    BindOptions bind;                 // pin options, PBKDF; bind.keyslot and bind.verify are not used
    // Replace the config reconstructed from the old JWE (e.g. to pin the new key with "thp").
    std::optional<std::string> config_json;
    // An existing passphrase of the volume, used when the old binding no longer recovers (its Tang keys are
    // gone), as `clevis luks regen` asks for one. Not copied: it must outlive the call.
    std::optional<std::string_view> existing_passphrase;
};
struct RegenResult {
    int old_keyslot = -1;             // the keyslot regenerated (the binding stays in it)
    BindResult bound;                 // the new binding: same keyslot, verified
    bool resumed = false;             // an interrupted regen of this keyslot was finished first
    bool used_existing_passphrase = false;
};
// Re-bind in place after a Tang key rotation, as `clevis luks regen` does: the binding stays in `keyslot`
// with its token id, with a fresh passphrase encrypted to the servers' current keys. Needs room for one
// token only (nested sss over 3 Tang fits a default 16 KiB header). Without `config_json`, a tang binding
// pins the OLD signing key (from the advertisement in its JWE): tangd signs /adv/{old thp} with it after
// rotation, so the new keys are trusted through the old one. sss bindings trust their servers as
// `clevis luks regen` does.
// Crash-safe: a small "luksforge-regen" token records the work; the new binding is proven through the
// server(s) in a temporary keyslot before the old one is touched, so at every moment either the old or the
// new binding opens the volume; rerunning regen for the keyslot finishes (or cleanly restarts) it.
RegenResult regen(Volume& volume, int keyslot, const RegenOptions& options = {});

// Open the volume as /dev/mapper/NAME through dm-crypt with a passphrase (e.g. Unlocked::passphrase).
void activate(Volume& volume, std::string_view name, const SecretBuffer& passphrase, int keyslot = -1);

// Token JSON <-> compact JWE in Clevis's exact layout (encrypted_key kept, possibly empty).
std::string token_json(int keyslot, std::string_view compact_jwe);
std::string token_to_compact(std::string_view token_json);

}  // namespace luksforge::clevis
