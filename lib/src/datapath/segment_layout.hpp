// Internal: what the one-pass data path must reproduce of a LUKS2 volume — its single data segment (cipher,
// key size, sector size, offset, IV tweak) and the header geometry and identity an instance keeps (UUID, label,
// subsystem, metadata and keyslot area sizes, persistent activation flags).
#pragma once

#include "datapath/xts_cipher.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <variant>

namespace luksforge {
class Volume;
}

namespace luksforge::datapath {

struct SegmentLayout {
    CipherSpec cipher;
    std::uint64_t data_offset = 0;        // bytes from the start of the LUKS2 volume
    std::uint64_t iv_tweak = 0;           // 512-byte sectors added to every plain64 IV
    std::uint64_t metadata_bytes = 0;     // one LUKS2 header copy (binary header + JSON area)
    std::uint64_t keyslots_bytes = 0;
    std::string uuid, label, subsystem;
    std::uint32_t activation_flags = 0;   // persistent flags (allow-discards, ...)
};

// The layout of `volume` when the one-pass data path can reproduce it, else why it cannot (one line): a
// cipher it does not implement, integrity protection, a re-encryption in progress, more than one segment, a
// segment of fixed size.
std::variant<SegmentLayout, std::string> read_segment_layout(const Volume& volume);

}  // namespace luksforge::datapath
