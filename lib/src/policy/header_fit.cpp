// Room in the LUKS2 header for seal and stamp: the peak JSON of their order of operations (one Clevis token at a
// time), for a metadata size (`luksforge policy check`) and for a real volume (seal and stamp check up front).
#include "policy/header_fit.hpp"

#include "util/cryptsetup_util.hpp"

#include <luksforge/policy.hpp>

#include <libcryptsetup.h>

#include <algorithm>
#include <fstream>
#include <string>

namespace luksforge {
namespace detail {

std::optional<std::size_t> on_disk_json_length(const std::filesystem::path& device, std::uint64_t metadata_bytes) {
    if (metadata_bytes <= binary_header_bytes) return std::nullopt;
    std::ifstream in(device, std::ios::binary);
    if (!in.seekg(static_cast<std::streamoff>(binary_header_bytes))) return std::nullopt;
    std::string area(metadata_bytes - binary_header_bytes, '\0');
    if (!in.read(area.data(), static_cast<std::streamsize>(area.size()))) return std::nullopt;
    const std::size_t end = area.find('\0');
    if (end == 0 || end == std::string::npos || area[0] != '{') return std::nullopt;
    return end;
}

HeaderUse header_use(const Volume& volume) {
    HeaderUse use;
    std::uint64_t keyslots_area = 0;
    {
        auto guard = cryptsetup_guard();
        crypt_device* cd = volume.native_handle();
        check_crypt(crypt_get_metadata_size(cd, &use.metadata_bytes, &keyslots_area),
                    "cannot read the LUKS2 metadata size of " + volume.path().string());
        // crypt_dump_json() re-serialises with spacing; the compact on-disk text (read below) is what must fit.
        const char* json = nullptr;
        check_crypt(crypt_dump_json(cd, &json, 0), "cannot read the LUKS2 metadata of " + volume.path().string());
        use.json_bytes = std::char_traits<char>::length(json);
    }
    if (const auto on_disk = on_disk_json_length(volume.path(), use.metadata_bytes)) use.json_bytes = *on_disk;
    return use;
}

}  // namespace detail

namespace {

using namespace detail;

std::size_t json_area(std::uint64_t metadata_bytes) {
    return metadata_bytes > binary_header_bytes ? static_cast<std::size_t>(metadata_bytes - binary_header_bytes - 1) : 0;
}

std::size_t token_entry(std::size_t token_bytes) { return token_bytes + token_entry_overhead; }

// The peak of a re-encryption followed by a bind that replaces (or adds) one token, from `current` JSON bytes.
std::size_t peak(std::size_t current, const PipelineSteps& steps) {
    const std::size_t state = steps.add_state_record ? seal_state_json : 0;
    // Re-encryption: a new keyslot per supplied passphrase plus its own bookkeeping; the old tokens stay.
    const std::size_t rekey =
        steps.rekeyed_keyslots == 0 ? 0 : current + state + steps.rekeyed_keyslots * keyslot_json + reencryption_json;
    // Bind: the new keyslot first (token-less, verified in memory), then one write puts the new token in place of
    // the old one. Measured from the header before the re-encryption, less the tokens it drops (their keyslots
    // are not subtracted: an upper bound).
    std::size_t dropped = 0;
    if (steps.rekeyed_keyslots != 0 && steps.dropped_token_bytes != 0)
        dropped = std::min(current, token_entry(steps.dropped_token_bytes));
    std::size_t bind = current - dropped + state + keyslot_json;
    const std::size_t added = token_entry(steps.new_token_bytes);
    const std::size_t removed = steps.replaced_token_bytes ? token_entry(steps.replaced_token_bytes) : 0;
    if (added > removed) bind += added - removed;
    return std::max(rekey, bind);
}

}  // namespace

HeaderFit seal_header_fit(std::uint64_t metadata_bytes, std::size_t token_bytes) {
    // The image as %post left it with stock `clevis luks bind`: build keyslot, Clevis keyslot and its token.
    const std::size_t bound_image = fresh_header_json + keyslot_json + token_entry(token_bytes);
    PipelineSteps steps;
    steps.new_token_bytes = token_bytes;
    steps.replaced_token_bytes = token_bytes;
    steps.rekeyed_keyslots = 1;
    steps.add_state_record = true;
    return {peak(bound_image, steps), json_area(metadata_bytes)};
}

HeaderFit stamp_header_fit(std::uint64_t metadata_bytes, std::size_t token_bytes, bool one_pass) {
    // One pass: a freshly formatted header (its keyslot is the binding's) and the new token.
    if (one_pass) return {fresh_header_json + token_entry(token_bytes), json_area(metadata_bytes)};
    // A sealed base: one keyslot (the binding's) and its token.
    const std::size_t base = fresh_header_json + token_entry(token_bytes);
    PipelineSteps steps;
    steps.new_token_bytes = token_bytes;
    steps.replaced_token_bytes = token_bytes;
    steps.rekeyed_keyslots = 1;
    return {peak(base, steps), json_area(metadata_bytes)};
}

HeaderFit volume_header_fit(const Volume& volume, const PipelineSteps& steps) {
    const HeaderUse use = header_use(volume);
    return {peak(use.json_bytes, steps), use.available()};
}

}  // namespace luksforge
