#include "luks/rekey_leftovers.hpp"

#include <luksforge/secret.hpp>

#include "util/cryptsetup_util.hpp"

#include <libcryptsetup.h>

namespace luksforge::detail {

int remove_unbound_keyslots_of(crypt_device* cd, const std::vector<std::string_view>& passphrases) {
    int removed = 0;
    const int max = crypt_keyslot_max(CRYPT_LUKS2);
    for (int slot = 0; slot < max; ++slot) {
        if (crypt_keyslot_status(cd, slot) != CRYPT_SLOT_UNBOUND) continue;
        for (std::string_view passphrase : passphrases) {
            // Unbound keyslots open only to read their key (one PBKDF derivation); the key is wiped at once.
            SecretBuffer key(512);
            std::size_t size = key.size();
            clear_crypt_error();
            if (crypt_volume_key_get(cd, slot, key.chars(), &size, passphrase.data(), passphrase.size()) < 0) continue;
            clear_crypt_error();
            check_crypt(crypt_keyslot_destroy(cd, slot),
                        "cannot remove keyslot " + std::to_string(slot) + " left by an interrupted re-key");
            ++removed;
            break;
        }
    }
    clear_crypt_error();
    return removed;
}

}  // namespace luksforge::detail
