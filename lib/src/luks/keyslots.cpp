// Volume keyslots: adding (by passphrase or volume key), removing (alone or with the tokens serving only
// them), testing passphrases, recovering the volume key and describing keyslots.
#include "luks/volume_internal.hpp"

#include <algorithm>
#include <cerrno>

namespace luksforge {

using detail::check_crypt;
using detail::cryptsetup_guard;
using detail::from_crypt_pbkdf;
using detail::kMaxVolumeKeyBytes;
using detail::set_pbkdf;

namespace {

std::string priority_name(crypt_keyslot_priority priority) {
    switch (priority) {
        case CRYPT_SLOT_PRIORITY_IGNORE: return "ignore";
        case CRYPT_SLOT_PRIORITY_PREFER: return "prefer";
        case CRYPT_SLOT_PRIORITY_NORMAL: return "normal";
        default: return "invalid";
    }
}

}  // namespace

int Volume::add_keyslot(std::string_view existing_passphrase, std::string_view new_passphrase,
                        const std::optional<Pbkdf>& pbkdf, int slot) {
    SecretBuffer key = volume_key(existing_passphrase);
    return add_keyslot_by_volume_key(new_passphrase, pbkdf, slot, &key);
}

int Volume::add_keyslot_by_volume_key(std::string_view new_passphrase, const std::optional<Pbkdf>& pbkdf, int slot,
                                      const SecretBuffer* volume_key) {
    auto guard = cryptsetup_guard();
    crypt_device* cd = impl_->cd.get();
    if (volume_key == nullptr && !impl_->volume_key_in_memory)
        throw Error(EINVAL, "no volume key in memory for " + impl_->path.string() +
                                " (only right after format); unlock with a passphrase instead");
    set_pbkdf(cd, pbkdf ? pbkdf : impl_->default_pbkdf);
    detail::clear_crypt_error();
    const int target = slot < 0 ? CRYPT_ANY_SLOT : slot;
    int rc = 0;
    if (volume_key == nullptr)
        rc = crypt_keyslot_add_by_volume_key(cd, target, nullptr, 0, new_passphrase.data(), new_passphrase.size());
    else
        rc = crypt_keyslot_add_by_key(cd, target, volume_key->chars(), volume_key->size(), new_passphrase.data(),
                                      new_passphrase.size(), 0);
    const int restored = crypt_set_pbkdf_type(cd, nullptr);
    (void)restored;
    if (impl_->default_pbkdf) set_pbkdf(cd, impl_->default_pbkdf);
    if (rc == -EPERM) throw AuthError("volume key does not match " + impl_->path.string());
    return check_crypt(rc, "cannot add keyslot to " + impl_->path.string());
}

void Volume::remove_keyslot(int slot) {
    auto guard = cryptsetup_guard();
    crypt_device* cd = impl_->cd.get();
    const crypt_keyslot_info status = crypt_keyslot_status(cd, slot);
    if (status == CRYPT_SLOT_INVALID || status == CRYPT_SLOT_INACTIVE)
        throw NotFoundError("keyslot " + std::to_string(slot) + " does not exist in " + impl_->path.string());
    detail::clear_crypt_error();
    check_crypt(crypt_keyslot_destroy(cd, slot), "cannot remove keyslot " + std::to_string(slot));
}

std::vector<int> Volume::remove_tokens_only_of(int slot) {
    auto guard = cryptsetup_guard();
    if (!keyslot(slot))
        throw NotFoundError("keyslot " + std::to_string(slot) + " does not exist in " + impl_->path.string());
    std::vector<int> removed;
    for (const Token& token : tokens()) {
        // Keyslot-less tokens (e.g. state records) serve no keyslot and are none of this slot's business.
        if (token.keyslots.empty() ||
            std::any_of(token.keyslots.begin(), token.keyslots.end(), [&](int other) { return other != slot; }))
            continue;
        remove_token(token.id);
        removed.push_back(token.id);
    }
    return removed;
}

std::vector<int> Volume::remove_keyslot_and_tokens(int slot) {
    auto guard = cryptsetup_guard();
    // Tokens first: an interruption leaves a keyslot without a token, never a token without its keyslot.
    std::vector<int> removed = remove_tokens_only_of(slot);
    remove_keyslot(slot);
    return removed;
}

std::optional<int> Volume::test_passphrase(std::string_view passphrase, int slot) const {
    auto guard = cryptsetup_guard();
    detail::clear_crypt_error();
    // Activation with a null name only verifies the passphrase.
    const int rc = crypt_activate_by_passphrase(impl_->cd.get(), nullptr, slot < 0 ? CRYPT_ANY_SLOT : slot,
                                                passphrase.data(), passphrase.size(), 0);
    if (rc == -EPERM || rc == -ENOENT) {
        detail::clear_crypt_error();
        return std::nullopt;
    }
    return check_crypt(rc, "cannot test passphrase on " + impl_->path.string());
}

SecretBuffer Volume::volume_key(std::string_view passphrase, int slot) const {
    auto guard = cryptsetup_guard();
    SecretBuffer key(kMaxVolumeKeyBytes);
    std::size_t size = key.size();
    detail::clear_crypt_error();
    const int rc = crypt_volume_key_get(impl_->cd.get(), slot < 0 ? CRYPT_ANY_SLOT : slot, key.chars(), &size,
                                        passphrase.data(), passphrase.size());
    if (rc == -EPERM || rc == -ENOENT) {
        detail::clear_crypt_error();
        throw AuthError("no keyslot of " + impl_->path.string() + " opens with this passphrase");
    }
    check_crypt(rc, "cannot unlock " + impl_->path.string());
    key.resize(size);
    return key;
}

std::optional<Keyslot> Volume::keyslot(int slot) const {
    auto guard = cryptsetup_guard();
    crypt_device* cd = impl_->cd.get();
    const crypt_keyslot_info status = crypt_keyslot_status(cd, slot);
    if (status != CRYPT_SLOT_ACTIVE && status != CRYPT_SLOT_ACTIVE_LAST && status != CRYPT_SLOT_UNBOUND)
        return std::nullopt;
    Keyslot info;
    info.id = slot;
    info.bound_to_segment = status != CRYPT_SLOT_UNBOUND;
    const int key_size = crypt_keyslot_get_key_size(cd, slot);
    info.key_bytes = key_size > 0 ? static_cast<std::size_t>(key_size) : 0;
    info.priority = priority_name(crypt_keyslot_get_priority(cd, slot));
    crypt_pbkdf_type pbkdf{};
    if (crypt_keyslot_get_pbkdf(cd, slot, &pbkdf) == 0) info.pbkdf = from_crypt_pbkdf(pbkdf);
    detail::clear_crypt_error();
    return info;
}

std::vector<Keyslot> Volume::keyslots() const {
    auto guard = cryptsetup_guard();
    std::vector<Keyslot> result;
    const int max = crypt_keyslot_max(crypt_get_type(impl_->cd.get()));
    for (int slot = 0; slot < max; ++slot) {
        if (auto info = keyslot(slot)) result.push_back(std::move(*info));
    }
    return result;
}

}  // namespace luksforge
