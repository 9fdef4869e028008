// Internal: finishing a re-encryption whose teardown libcryptsetup did not complete.
//
// libcryptsetup (2.6.1, also stock `cryptsetup reencrypt`) ends a re-encryption with several header commits:
// one crypt_keyslot_destroy() per keyslot of the old volume key, then the removal of the re-encryption keyslot,
// backup segments and the `online-reencrypt-v2` requirement in one last commit. Killed in between, the header
// still says "re-encryption in progress" while the old key has no keyslot left: libcryptsetup can neither
// resume (it needs the old key) nor open the volume, and `cryptsetup repair` does not help — yet every sector is
// already on the new key. These functions recognise that state from the header alone and write the header the
// last commit would have written.
#pragma once

#include <filesystem>

#include <jansson.h>

namespace luksforge::detail {

// True when `header` (the LUKS2 JSON) describes a re-encryption whose data is entirely on the new key: the
// requirement flag is set, no segment is "in-reencryption", every data segment is bound to the digest of the
// "backup-final" segment only, and the data did not move (no "backup-moved-segment").
bool reencryption_data_complete(const json_t* header);

// Finish the teardown on `device` (no libcryptsetup context may be open on it meanwhile): wipe the keyslot areas
// of the old key, then write both header copies (sequence id + 1, fresh checksums) without the old key's
// keyslots and digest, the re-encryption keyslot, the backup segments and the requirement. Each header copy is
// one write followed by fsync; interrupted, libcryptsetup loads the copy that is intact and a rerun repeats.
// Throws FormatError when the header is not in that state or not understood.
void finish_reencryption_teardown(const std::filesystem::path& device);

}  // namespace luksforge::detail
