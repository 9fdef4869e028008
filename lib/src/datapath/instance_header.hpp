// Internal: an instance's LUKS2 header, made apart from the instance and written into it last. The header is
// formatted for the instance's new volume key in a private scratch file that mirrors the base's layout (same
// UUID, label, subsystem, cipher, sector size, data offset, metadata and keyslot area sizes, activation flags),
// so keyslots, tokens and the Tang verification all happen before a single header byte reaches the instance:
// an instance interrupted at any point before write_instance_header() has no LUKS header at all and can never
// be taken for a finished one.
#pragma once

#include "datapath/segment_layout.hpp"

#include <luksforge/secret.hpp>

#include <cstdint>
#include <filesystem>

namespace luksforge::datapath {

// Format a LUKS2 header for `volume_key` with `layout` into the new file `path` (created 0600, must not exist),
// a sparse file of `volume_bytes` so libcryptsetup sees a volume of the instance's size. No keyslot yet. The
// volume-key digest uses pbkdf2 at 1000 iterations without benchmarking: the key is random (>= 256 bits), so
// digest iterations add no strength, only time.
void format_instance_header(const std::filesystem::path& path, std::uint64_t volume_bytes, const SegmentLayout& layout,
                            const SecretBuffer& volume_key);

// Copy the header area [0, data_offset) of `header_file` into `out_fd` at `volume_offset` and fsync. Only its
// non-zero 64 KiB blocks are written: the caller guarantees the destination area is still a hole (a fresh file).
void write_instance_header(const std::filesystem::path& header_file, int out_fd, std::uint64_t volume_offset,
                           std::uint64_t data_offset);

}  // namespace luksforge::datapath
