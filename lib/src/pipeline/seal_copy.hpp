// Internal: seal by a one-pass copy (SealOptions::copy, `seal --copy`). The sealed image is written next to the
// original with the one-pass data path (one_pass_instance.hpp: data re-encrypted on every core, the new header
// bound and verified through Tang apart and written last, fsynced) and atomically renamed over it. Crash
// safety needs no state record: until the rename the original is only read; after it, the image is sealed.
#pragma once

#include <luksforge/image.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/pipeline.hpp>

#include <filesystem>
#include <optional>
#include <string>

namespace luksforge::detail {

// The report of a seal done by copy; nullopt when the image must be sealed in place instead: the build
// passphrase opens nothing (sealed before? the in-place logic decides) or no copy is possible (`note` says
// why: a block device, a cipher the one-pass path does not implement, ...). Test-only crash points:
// "one-pass-data-written", "one-pass-header-written", "copy-renamed".
std::optional<SealReport> seal_by_copy(const std::filesystem::path& image, const LuksTarget& target,
                                       const Volume& volume, const SecretBuffer& build_passphrase,
                                       const SealOptions& options, std::string& note);

}  // namespace luksforge::detail
