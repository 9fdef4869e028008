// Internal: a complete re-keyed image made in one pass (lib/src/datapath/), used by stamp for every instance
// and by seal when a copy is allowed. The data area is re-encrypted from the source into a new hidden file, the
// new header is formatted, bound and verified through Tang in a scratch file, and only then written into the
// new file — the last write before the caller renames it into place. Until then the new file has no LUKS
// header: an interrupted one is never taken for a finished one (and the source was only read).
#pragma once

#include "datapath/reencrypt_copy.hpp"
#include "datapath/segment_layout.hpp"

#include <luksforge/image.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/pin.hpp>
#include <luksforge/pipeline.hpp>

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace luksforge::detail {

// What the one-pass path needs to know of the source volume, read once.
struct OnePassSource {
    LuksTarget target;                         // image, partition offset and size
    datapath::SegmentLayout layout;
    SecretBuffer volume_key;                   // the source's
    std::vector<std::string> carried_tokens;   // keyslot-less tokens (other tools' metadata) kept in the copy
};

// The source as the one-pass path sees it, or why it cannot take it (then the caller falls back to
// libcryptsetup re-encryption). `volume` is the loaded source; `volume_key` opens it.
std::variant<OnePassSource, std::string> one_pass_source(const Volume& volume, const LuksTarget& target,
                                                         SecretBuffer volume_key);

struct OnePassBinding {
    PinBinding binding;
    PinOptions pin_options;
    Pbkdf keyslot_pbkdf = Pbkdf::pbkdf2_fast(1000);
};

struct OnePassImage {
    int keyslot = -1;
    int token = -1;
    std::string fingerprint;
    std::string uuid;
    datapath::OnePassStats stats;
    double bind_seconds = 0;                   // header, keyslot, token and verification through Tang
};

// Write a re-keyed, bound and verified copy of `source` into the new file `destination` (created 0600; must
// not exist). Its only keyslot is the new binding's. `scratch_header` is a private path for the header while it
// is made (removed before returning). `crash_point` is called with "one-pass-data-written" and
// "one-pass-header-written" (test hook); `progress` with the data area's (done, total) bytes. Throws
// TangError when the binding cannot be verified.
OnePassImage write_one_pass_image(const OnePassSource& source, const OnePassBinding& binding,
                                  const std::filesystem::path& destination,
                                  const std::filesystem::path& scratch_header, bool keep_holes,
                                  const std::function<void(const char*)>& crash_point,
                                  const std::function<void(std::uint64_t, std::uint64_t)>& progress);

// Several at once (stamp): the source is read and decrypted once for all of them; then each image's header is
// made, bound, verified and written, and `on_finished(index, image)` is called right after (it may publish the
// image, or throw to stop: images not finished yet are left for the caller's clean-up).
void write_one_pass_images(const OnePassSource& source, const OnePassBinding& binding,
                           const std::vector<std::filesystem::path>& destinations,
                           const std::vector<std::filesystem::path>& scratch_headers, bool keep_holes,
                           const std::function<void(std::size_t, const OnePassImage&)>& on_finished);

}  // namespace luksforge::detail
