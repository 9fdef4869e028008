// Internal: what the files of the luks area share — the Volume's private state (Volume::Impl), direct reads
// of the device (size, magic, the LUKS2 JSON header) and the translation of luksforge's Pbkdf to and from
// libcryptsetup's. Helpers used by one file only stay in that file.
#pragma once

#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>

#include "util/cryptsetup_util.hpp"
#include "util/json_util.hpp"
#include "util/unique_fd.hpp"

#include <libcryptsetup.h>

#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

namespace luksforge {

namespace detail {

// Largest volume key libcryptsetup hands out; buffers for a volume key are this big, then shrunk.
inline constexpr std::size_t kMaxVolumeKeyBytes = 512;

struct CryptDeviceDeleter {
    void operator()(crypt_device* cd) const noexcept {
        std::lock_guard lock(cryptsetup_mutex());
        crypt_free(cd);
    }
};
using CryptDevicePtr = std::unique_ptr<crypt_device, CryptDeviceDeleter>;

// --- device_io.cpp: the device itself, without libcryptsetup ------------------------------------------------

// Throw the luksforge exception for an errno value: NotFoundError, BusyError or Error.
[[noreturn]] void throw_errno(int code, const std::string& what);

// stat() a volume's device; NotFoundError when missing, FormatError unless a regular file or block device.
void stat_or_throw(const std::filesystem::path& device, struct stat& st);
std::uint64_t device_size_bytes(const std::filesystem::path& device);
std::uint32_t logical_block_size(const std::filesystem::path& device);  // 512 for regular files
// Up to `length` bytes from `offset` (fewer at the end of the device).
std::string read_bytes(const std::filesystem::path& device, std::uint64_t offset, std::size_t length);
// The LUKS magic (primary "LUKS\xba\xbe" or LUKS2 secondary "SKUL\xba\xbe") at offset 0.
bool has_luks_magic(const std::filesystem::path& device);
// The primary LUKS2 JSON header, parsed straight from the device.
JsonPtr read_luks2_json(const std::filesystem::path& device);
// The master-key digest of a LUKS1 binary header (mk-digest, its salt, iterations and the header's hash-spec)
// as the LUKS2 digest object `cryptsetup convert` makes of it: {"type":"pbkdf2", "hash", "iterations",
// "salt", "digest"}, salt and digest in padded base64.
JsonPtr read_luks1_digest(const std::filesystem::path& device);

// --- pbkdf.cpp ----------------------------------------------------------------------------------------------

Pbkdf from_crypt_pbkdf(const crypt_pbkdf_type& in);
// Apply `pbkdf` for the next keyslot operation, or reset to the library default when it is empty.
void set_pbkdf(crypt_device* cd, const std::optional<Pbkdf>& pbkdf);

}  // namespace detail

// --- volume.cpp ---------------------------------------------------------------------------------------------

struct Volume::Impl {
    std::filesystem::path path;
    DeviceLock lock;
    detail::CryptDevicePtr cd;
    std::optional<Pbkdf> default_pbkdf;
    bool volume_key_in_memory = false;  // right after format()

    Impl(std::filesystem::path p, DeviceLock l) : path(std::move(p)), lock(std::move(l)) {}

    // crypt_init + crypt_load of `path`; refuses LUKS1 unless `any_version`.
    void load(bool any_version);
};

}  // namespace luksforge
