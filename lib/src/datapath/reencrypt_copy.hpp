// Internal: the one-pass data path. Reads a LUKS2 volume's ciphertext once, decrypts it with the old volume
// key and encrypts it with a new one on every core, and writes it into a new file; the rest of the image (a
// partition table, other partitions) is copied as it is. The volume's header area is left a hole: the caller
// writes the new header last (instance_header.hpp) after everything else is on disk.
//
// Holes: with keep_holes, encryption sectors that are holes in the source (never written through dm-crypt, or
// punched) stay holes. That is safe because nothing meaningful lives there — dm-crypt returns noise for them in
// the base as in the instance, only different noise — and it reveals exactly what the base already reveals:
// which sectors were never written. It is not safe for a volume whose plaintext relies on reading back sectors
// it never wrote (no filesystem does); pass keep_holes = false to write every sector (libcryptsetup's result).
#pragma once

#include "datapath/segment_layout.hpp"
#include "datapath/sector_stream.hpp"

#include <luksforge/secret.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <vector>

namespace luksforge::datapath {

struct OnePassCopy {
    std::filesystem::path source;          // the base image (or bare LUKS file), read only
    std::uint64_t volume_offset = 0;       // where the LUKS2 volume starts in it (a partition's offset)
    std::uint64_t volume_bytes = 0;        // the volume's size; 0 = to the end of the source
    SegmentLayout layout;
    const SecretBuffer* old_key = nullptr;
    const SecretBuffer* new_key = nullptr; // reencrypt_copy() with one output
    bool keep_holes = true;
    StreamOptions stream;                  // threads, chunk size, progress of the data area
};

// One image written by a pass: a new, empty file and its volume key.
struct OnePassOutput {
    int fd = -1;
    const SecretBuffer* new_key = nullptr;
};

struct OnePassStats {
    std::uint64_t data_bytes = 0;          // re-encrypted
    std::uint64_t hole_bytes = 0;          // of the data area, left as holes
    std::uint64_t copied_bytes = 0;        // outside the volume, copied as they are
    unsigned threads = 0;
    double seconds = 0;
};

// Write the whole image of `copy` into `out_fd`, a new, empty file (its size is set here): everything but the
// volume's header area, then fdatasync. Aligned data goes to the disk with O_DIRECT where the filesystem allows
// it (no page-cache copy, no dirty-page stall at the end), the rest buffered with its writeback started at once. Throws Error on I/O failures, FormatError on a bad layout.
OnePassStats reencrypt_copy(const OnePassCopy& copy, int out_fd);

// The same for several images at once: the source is read and decrypted once, then encrypted with each
// output's key and written to it (stamp's instances). copy.new_key is ignored.
OnePassStats reencrypt_copies(const OnePassCopy& copy, const std::vector<OnePassOutput>& outputs);

// The size of what reencrypt_copy() writes: the source's size.
std::uint64_t source_bytes(const std::filesystem::path& source);

}  // namespace luksforge::datapath
