// Test fixture: a LUKS2 image file whose keyslot 0 a known passphrase opens — what the binding tests
// (bind, unlock, regen, the token handler, the tpm2 pin) start from.
#pragma once

#include "testutil.hpp"

#include <filesystem>
#include <string>

namespace luksforge::test {

// 32 MiB, sparse, keyslot 0 with fast pbkdf2 (binding tests need no PBKDF cost); the passphrase is also in
// pass_file (0600) for the CLI's --key-file. Removed with its directory.
struct PassphraseImage {
    explicit PassphraseImage(const std::string& passphrase);
    TempDir dir;
    std::filesystem::path path = dir / "disk.img";
    std::filesystem::path pass_file = dir / "pass";
    std::string str() const { return path.string(); }
    // The first 16 MiB (the LUKS2 header area): compared before and after a refused operation.
    std::string header() const;
};

}  // namespace luksforge::test
