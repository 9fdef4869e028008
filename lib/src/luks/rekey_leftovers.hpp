// Internal: keyslots left behind by a re-key that was interrupted before its re-encryption started.
#pragma once

#include <string_view>
#include <vector>

struct crypt_device;

namespace luksforge::detail {

// Destroy every unbound keyslot that one of `passphrases` opens. A re-key makes exactly such keyslots (the new
// volume key under each surviving passphrase, tokens already assigned) before it starts re-encrypting; killed
// in between, a rerun would add a second set and the tokens would name both. Destroying a keyslot also
// unassigns it from every token (one header commit each). Returns how many were removed. Call with the
// cryptsetup mutex held and no re-encryption in progress.
int remove_unbound_keyslots_of(crypt_device* cd, const std::vector<std::string_view>& passphrases);

}  // namespace luksforge::detail
