// Volume::rekey: replace the volume key by offline re-encryption of the data area (LUKS2 "reencrypt"),
// resuming an interrupted one. Read Volume::rekey() first: it is the list of steps below.
#include "luks/volume_internal.hpp"

#include "luks/reencrypt_lock.hpp"
#include "luks/reencrypt_teardown.hpp"
#include "luks/rekey_leftovers.hpp"

#include <algorithm>
#include <cerrno>
#include <exception>
#include <functional>
#include <string_view>
#include <utility>
#include <vector>

namespace luksforge {

using detail::check_crypt;
using detail::cryptsetup_guard;
using detail::JsonPtr;

namespace {

using OpenedKeyslots = std::vector<std::pair<int, std::string_view>>;  // old keyslot, the passphrase opening it
using KeyslotMap = std::vector<std::pair<int, int>>;                   // old keyslot → new keyslot

struct ProgressContext {
    const std::function<bool(const RekeyProgress&)>* callback = nullptr;
    std::exception_ptr error;
};

// libcryptsetup calls this between hotzones. Non-zero stops re-encryption (resumable later).
int progress_trampoline(std::uint64_t size, std::uint64_t offset, void* usrptr) noexcept {
    auto* context = static_cast<ProgressContext*>(usrptr);
    if (context == nullptr || context->callback == nullptr || !*context->callback) return 0;
    try {
        return (*context->callback)(RekeyProgress{offset, size}) ? 0 : 1;
    } catch (...) {
        context->error = std::current_exception();
        return 1;
    }
}

// Tokens that serve a keyslot now (old keyslots live until re-encryption ends, also when resuming): one of
// them left with none at the end served only keyslots that were dropped.
std::vector<int> tokens_serving_a_keyslot(const Volume& volume) {
    std::vector<int> serving;
    for (const Token& token : volume.tokens())
        if (!token.keyslots.empty()) serving.push_back(token.id);
    return serving;
}

// The header libcryptsetup loaded (the intact copy with the highest sequence id) is a re-encryption whose data
// is all on the new key: killed inside libcryptsetup's teardown (see reencrypt_teardown.hpp).
bool teardown_was_interrupted(crypt_device* cd) {
    if (crypt_reencrypt_status(cd, nullptr) == CRYPT_REENCRYPT_NONE) return false;
    const char* text = nullptr;
    if (crypt_dump_json(cd, &text, 0) != 0 || text == nullptr) return false;
    return detail::reencryption_data_complete(detail::json_parse(text, "LUKS2 header").get());
}

// While it re-encrypts, libcryptsetup rewrites a PBKDF2 digest binding the re-encryption metadata to the keys;
// with the context's default PBKDF (a benchmark) it benchmarks PBKDF2 for it again and again. Measured on a
// 256 MiB image with 32 MiB hotzones: 319 000 HMAC iterations and 1.2 s of CPU, against 20 000 and 0.35 s for
// `cryptsetup reencrypt`, which sets its PBKDF explicitly. An explicit PBKDF makes libcryptsetup use its fixed
// minimum (1000 iterations) for that digest, as the stock tool does; keyslots are not added from here on.
void use_explicit_pbkdf_for_reencryption_metadata(crypt_device* cd) {
    detail::set_pbkdf(cd, Pbkdf::pbkdf2_fast());
}

// Resume an interrupted re-encryption (after crash recovery if needed). Any supplied passphrase that opens
// both keys will do; the new keyslots were made with the same passphrases.
// Returns false when crash recovery already ended the re-encryption, or left only its teardown to finish.
bool resume_reencryption(Volume& volume, crypt_reencrypt_info status, const std::vector<std::string_view>& passphrases,
                         const RekeyOptions& options, const std::function<void()>& reload) {
    const std::string where = volume.path().string();
    int rc = -EPERM;
    for (std::string_view passphrase : passphrases) {
        crypt_params_reencrypt params{};
        params.flags = CRYPT_REENCRYPT_RESUME_ONLY;
        params.max_hotzone_size = options.max_hotzone_bytes / 512;
        if (status == CRYPT_REENCRYPT_CRASH) {
            crypt_params_reencrypt recovery{};
            recovery.flags = CRYPT_REENCRYPT_RECOVERY;
            use_explicit_pbkdf_for_reencryption_metadata(volume.native_handle());
            detail::clear_crypt_error();
            rc = crypt_reencrypt_init_by_passphrase(volume.native_handle(), nullptr, passphrase.data(), passphrase.size(),
                                                    CRYPT_ANY_SLOT, CRYPT_ANY_SLOT, nullptr, nullptr, &recovery);
            if (rc == -EPERM) continue;
            check_crypt(rc, "cannot recover interrupted re-encryption of " + where);
            reload();
            // A single-hotzone volume is all on the new key once its hotzone is recovered.
            if (crypt_reencrypt_status(volume.native_handle(), nullptr) == CRYPT_REENCRYPT_NONE ||
                teardown_was_interrupted(volume.native_handle()))
                return false;
        }
        use_explicit_pbkdf_for_reencryption_metadata(volume.native_handle());
        detail::clear_crypt_error();
        rc = crypt_reencrypt_init_by_passphrase(volume.native_handle(), nullptr, passphrase.data(), passphrase.size(),
                                                CRYPT_ANY_SLOT, CRYPT_ANY_SLOT, nullptr, nullptr, &params);
        if (rc != -EPERM) break;
    }
    if (rc == -EPERM) throw AuthError("no supplied passphrase opens the re-encryption in progress on " + where);
    check_crypt(rc, "cannot resume re-encryption of " + where);
    return true;
}

// Which keyslot each passphrase opens (one PBKDF derivation each); each keyslot once.
OpenedKeyslots keyslots_opened_by(const Volume& volume, const std::vector<std::string_view>& passphrases) {
    OpenedKeyslots opened;
    for (std::size_t i = 0; i < passphrases.size(); ++i) {
        const auto slot = volume.test_passphrase(passphrases[i]);
        if (!slot)
            throw AuthError("passphrase " + std::to_string(i + 1) + " opens no keyslot of " + volume.path().string());
        if (std::none_of(opened.begin(), opened.end(), [&](const auto& o) { return o.first == *slot; }))
            opened.emplace_back(*slot, passphrases[i]);
    }
    return opened;
}

// Bound keyslots that no supplied passphrase opens do not survive the new key: refuse unless told to drop them.
void require_consent_to_drop_others(const Volume& volume, const OpenedKeyslots& opened, bool drop_other_keyslots) {
    std::vector<int> others;
    for (const auto& slot : volume.keyslots()) {
        if (slot.bound_to_segment &&
            std::none_of(opened.begin(), opened.end(), [&](const auto& o) { return o.first == slot.id; }))
            others.push_back(slot.id);
    }
    if (!others.empty() && !drop_other_keyslots) {
        std::string list;
        for (int id : others) list += (list.empty() ? "" : ", ") + std::to_string(id);
        throw FormatError("keyslot(s) " + list + " of " + volume.path().string() +
                          " are not opened by any supplied passphrase; supply their passphrases or drop them "
                          "(--drop-other-keyslots)");
    }
}

// Old and new keyslots live side by side until re-encryption ends.
void require_free_keyslots(const Volume& volume, const OpenedKeyslots& opened) {
    const int max_slots = crypt_keyslot_max(CRYPT_LUKS2);
    if (static_cast<int>(volume.keyslots().size() + opened.size()) >= max_slots)
        throw FormatError("not enough free keyslots to re-key " + volume.path().string());
}

// New keyslots for the new volume key, not yet bound to any segment. The first call generates the key;
// later ones reuse it (and its digest). Each keeps its old slot's PBKDF cost. Appends to `map` as it goes,
// so a failure part-way can be undone.
void add_keyslots_for_new_key(Volume& volume, const OpenedKeyslots& opened, const std::vector<Token>& tokens_before,
                              std::size_t key_bytes, KeyslotMap& map) {
    crypt_device* cd = volume.native_handle();
    SecretBuffer new_key;
    for (const auto& [old_slot, passphrase] : opened) {
        crypt_pbkdf_type kept{};
        check_crypt(crypt_keyslot_get_pbkdf(cd, old_slot, &kept), "cannot read PBKDF of keyslot " + std::to_string(old_slot));
        Pbkdf pbkdf = detail::from_crypt_pbkdf(kept);
        if (pbkdf.iterations == 0) pbkdf.iterations = 1;
        detail::set_pbkdf(cd, pbkdf);
        detail::clear_crypt_error();
        int new_slot = 0;
        if (new_key.empty()) {
            new_slot = check_crypt(crypt_keyslot_add_by_key(cd, CRYPT_ANY_SLOT, nullptr, key_bytes, passphrase.data(),
                                                            passphrase.size(), CRYPT_VOLUME_KEY_NO_SEGMENT),
                                   "cannot add keyslot for the new volume key");
            map.emplace_back(old_slot, new_slot);
            new_key = SecretBuffer(detail::kMaxVolumeKeyBytes);
            std::size_t size = new_key.size();
            check_crypt(crypt_volume_key_get(cd, new_slot, new_key.chars(), &size, passphrase.data(), passphrase.size()),
                        "cannot read the new volume key");
            new_key.resize(size);
        } else {
            new_slot = check_crypt(crypt_keyslot_add_by_key(cd, CRYPT_ANY_SLOT, new_key.chars(), new_key.size(),
                                                            passphrase.data(), passphrase.size(),
                                                            CRYPT_VOLUME_KEY_NO_SEGMENT | CRYPT_VOLUME_KEY_DIGEST_REUSE),
                                   "cannot add keyslot for the new volume key");
            map.emplace_back(old_slot, new_slot);
        }
        // Tokens follow their keyslots; assigned now so an interrupted run already has them.
        for (const auto& token : tokens_before) {
            if (std::find(token.keyslots.begin(), token.keyslots.end(), old_slot) != token.keyslots.end())
                check_crypt(crypt_token_assign_keyslot(cd, token.id, new_slot), "cannot assign token");
        }
    }
    // The last keyslot's PBKDF stays set: the caller sets the re-encryption's next, or resets it on failure.
}

// Write the re-encryption segment into the header: from `old_slot`'s key to `new_slot`'s, forward, with
// checksum resilience.
void init_reencryption(Volume& volume, int old_slot, int new_slot, std::string_view passphrase, const std::string& cipher,
                       const std::string& mode, const RekeyOptions& options) {
    crypt_device* cd = volume.native_handle();
    crypt_params_luks2 luks2{};
    luks2.sector_size = static_cast<std::uint32_t>(crypt_get_sector_size(cd));
    crypt_params_reencrypt params{};
    params.mode = CRYPT_REENCRYPT_REENCRYPT;
    params.direction = CRYPT_REENCRYPT_FORWARD;
    params.resilience = "checksum";
    params.max_hotzone_size = options.max_hotzone_bytes / 512;
    params.hash = "sha256";
    params.luks2 = &luks2;
    detail::clear_crypt_error();
    check_crypt(crypt_reencrypt_init_by_passphrase(cd, nullptr, passphrase.data(), passphrase.size(), old_slot, new_slot,
                                                   cipher.c_str(), mode.c_str(), &params),
                "cannot start re-encryption of " + volume.path().string());
}

// Keyslots for a new volume key, then the re-encryption segment. Until the segment is written nothing has
// changed for the data: a failure before that removes the new keyslots again.
KeyslotMap begin_reencryption(Volume& volume, const OpenedKeyslots& opened, const RekeyOptions& options) {
    crypt_device* cd = volume.native_handle();
    const std::string cipher = options.cipher.value_or(crypt_get_cipher(cd));
    const std::string mode = options.cipher_mode.value_or(crypt_get_cipher_mode(cd));
    const std::size_t key_bytes = static_cast<std::size_t>(crypt_get_volume_key_size(cd));
    const std::vector<Token> tokens_before = volume.tokens();
    KeyslotMap map;
    try {
        add_keyslots_for_new_key(volume, opened, tokens_before, key_bytes, map);
        const auto& [first_old, first_passphrase] = opened.front();
        use_explicit_pbkdf_for_reencryption_metadata(cd);
        init_reencryption(volume, first_old, map.front().second, first_passphrase, cipher, mode, options);
    } catch (...) {
        if (crypt_reencrypt_status(cd, nullptr) == CRYPT_REENCRYPT_NONE) {
            for (const auto& [old_slot, new_slot] : map) crypt_keyslot_destroy(cd, new_slot);
            crypt_set_pbkdf_type(cd, nullptr);
        }
        throw;
    }
    return map;
}

// Re-encrypt the data area, or until the progress callback pauses; its exception comes through here.
void run_reencryption(Volume& volume, const RekeyOptions& options) {
    ProgressContext progress{&options.progress, nullptr};
    use_explicit_pbkdf_for_reencryption_metadata(volume.native_handle());
    detail::clear_crypt_error();
    const int rc = crypt_reencrypt_run(volume.native_handle(), progress_trampoline, &progress);
    if (progress.error) std::rethrow_exception(progress.error);
    check_crypt(rc, "re-encryption of " + volume.path().string() + " failed");
}

// libcryptsetup wiped the keyslots of the old key; drop their ids from every token. A token left with no
// keyslot served only dropped keyslots and opens nothing: it goes with them when the caller asked so.
void drop_wiped_keyslots_from_tokens(Volume& volume, const std::vector<int>& serving_tokens, bool drop_orphaned_tokens) {
    crypt_device* cd = volume.native_handle();
    for (const auto& token : volume.tokens()) {
        JsonPtr json = detail::json_parse(token.json, "token");
        JsonPtr kept = detail::json_take(json_array());
        bool changed = false;
        for (int slot : token.keyslots) {
            if (volume.keyslot(slot)) json_array_append_new(kept.get(), json_string(std::to_string(slot).c_str()));
            else changed = true;
        }
        const bool served = std::find(serving_tokens.begin(), serving_tokens.end(), token.id) != serving_tokens.end();
        if (drop_orphaned_tokens && served && json_array_size(kept.get()) == 0) {
            detail::clear_crypt_error();
            check_crypt(crypt_token_json_set(cd, token.id, nullptr), "cannot remove token " + std::to_string(token.id));
            continue;
        }
        if (!changed) continue;
        json_object_set(json.get(), "keyslots", kept.get());
        const std::string text = detail::json_dump(json.get());
        check_crypt(crypt_token_json_set(cd, token.id, text.c_str()), "cannot update token " + std::to_string(token.id));
    }
}

}  // namespace

RekeyResult Volume::rekey(const std::vector<std::string_view>& passphrases, const RekeyOptions& options) {
    auto guard = cryptsetup_guard();
    if (passphrases.empty()) throw FormatError("rekey needs at least one passphrase");
    if (luks_version() != 2) throw FormatError(impl_->path.string() + " is LUKS1; luksforge needs LUKS2");

    // One re-encryption per LUKS UUID among luksforge processes: copies of one image share the UUID, and
    // libcryptsetup's own lock (keyed by it) would fail the second one half-way.
    const char* uuid = crypt_get_uuid(impl_->cd.get());
    const detail::ReencryptLock uuid_lock = detail::ReencryptLock::acquire(uuid != nullptr ? uuid : "");

    RekeyResult result;
    result.old_fingerprint = fingerprint();
    const std::vector<int> serving_tokens = tokens_serving_a_keyslot(*this);
    const crypt_reencrypt_info status = crypt_reencrypt_status(impl_->cd.get(), nullptr);
    if (status == CRYPT_REENCRYPT_INVALID) throw FormatError(impl_->path.string() + ": invalid re-encryption state");
    // A fresh context for the header libcryptsetup has rewritten underneath the current one.
    const auto reload = [this] {
        impl_->cd.reset();
        impl_->volume_key_in_memory = false;
        impl_->load(false);
    };
    // All data already on the new key, only the header still to be finished.
    const auto finish = [&] {
        if (teardown_was_interrupted(impl_->cd.get())) {
            impl_->cd.reset();
            try {
                detail::finish_reencryption_teardown(impl_->path);
            } catch (...) {
                reload();
                throw;
            }
            reload();
        }
        drop_wiped_keyslots_from_tokens(*this, serving_tokens, options.drop_orphaned_tokens);
        result.new_fingerprint = fingerprint();
        return result;
    };

    if (teardown_was_interrupted(impl_->cd.get())) return finish();
    if (status != CRYPT_REENCRYPT_NONE) {
        if (!resume_reencryption(*this, status, passphrases, options, reload)) return finish();
    } else {
        // Keyslots of an earlier attempt killed before its re-encryption started would otherwise stay, and
        // their tokens would name two keyslots.
        detail::remove_unbound_keyslots_of(impl_->cd.get(), passphrases);
        const OpenedKeyslots opened = keyslots_opened_by(*this, passphrases);
        require_consent_to_drop_others(*this, opened, options.drop_other_keyslots);
        require_free_keyslots(*this, opened);
        result.keyslot_map = begin_reencryption(*this, opened, options);
    }
    run_reencryption(*this, options);
    reload();
    if (crypt_reencrypt_status(impl_->cd.get(), nullptr) != CRYPT_REENCRYPT_NONE) {
        result.completed = false;  // paused by the progress callback
        result.new_fingerprint = fingerprint();
        return result;
    }
    drop_wiped_keyslots_from_tokens(*this, serving_tokens, options.drop_orphaned_tokens);
    result.new_fingerprint = fingerprint();
    return result;
}

}  // namespace luksforge
