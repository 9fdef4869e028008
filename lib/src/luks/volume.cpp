// Volume: opening, probing and formatting a LUKS2 header over libcryptsetup, and the Volume object's life.
#include "luks/volume_internal.hpp"

#include "luks/device_lock.hpp"

#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace luksforge {

using detail::check_crypt;
using detail::cryptsetup_guard;
using detail::device_size_bytes;
using detail::UniqueFd;
using detail::has_luks_magic;
using detail::logical_block_size;
using detail::set_pbkdf;
using detail::stat_or_throw;
using detail::throw_errno;

namespace {

constexpr std::uint64_t kDefaultLuks2DataOffset = 16ull << 20;  // libcryptsetup's default LUKS2 header size
constexpr std::uint64_t kDefaultMetadataBytes = 16ull << 10;

}  // namespace

void Volume::Impl::load(bool any_version) {
    crypt_device* raw = nullptr;
    detail::clear_crypt_error();
    const int rc = crypt_init(&raw, path.c_str());
    if (rc < 0) detail::throw_crypt_error(rc, "cannot open " + path.string());
    cd.reset(raw);
    detail::attach_log_callback(raw);
    const int loaded = crypt_load(raw, CRYPT_LUKS, nullptr);
    if (loaded < 0) {
        if (!has_luks_magic(path)) throw FormatError(path.string() + " is not a LUKS volume");
        detail::throw_crypt_error(loaded, "cannot load LUKS header of " + path.string());
    }
    const char* type = crypt_get_type(raw);
    if (!any_version && type != nullptr && std::strcmp(type, CRYPT_LUKS1) == 0)
        throw FormatError(path.string() + " is LUKS1; luksforge needs LUKS2 (`cryptsetup convert --type luks2 " +
                          path.string() + "`, which refuses a header holding Clevis luksmeta bindings: "
                          "`luksforge bind` on such a volume prints the steps that convert it)");
}

Volume::Volume(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}
Volume::Volume(Volume&&) noexcept = default;
Volume& Volume::operator=(Volume&&) noexcept = default;
Volume::~Volume() noexcept = default;

crypt_device* Volume::native_handle() const noexcept { return impl_->cd.get(); }
const std::filesystem::path& Volume::path() const noexcept { return impl_->path; }

int Volume::luks_version() const {
    auto guard = cryptsetup_guard();
    const char* type = crypt_get_type(impl_->cd.get());
    return type != nullptr && std::strcmp(type, CRYPT_LUKS1) == 0 ? 1 : 2;
}

Volume Volume::open(const std::filesystem::path& device, Access access) {
    struct stat st {};
    stat_or_throw(device, st);
    DeviceLock lock = DeviceLock::acquire(device, access == Access::read_write);
    if (access == Access::read_write) detail::ensure_block_device_not_in_use(device);
    auto guard = cryptsetup_guard();
    auto impl = std::make_unique<Impl>(device, std::move(lock));
    impl->load(false);
    return Volume(std::move(impl));
}

std::optional<Volume> Volume::probe(const std::filesystem::path& device) {
    struct stat st {};
    stat_or_throw(device, st);
    if (!has_luks_magic(device)) return std::nullopt;
    DeviceLock lock = DeviceLock::acquire(device, false);
    auto guard = cryptsetup_guard();
    auto impl = std::make_unique<Impl>(device, std::move(lock));
    try {
        impl->load(true);
    } catch (const FormatError&) {
        return std::nullopt;
    }
    return Volume(std::move(impl));
}

void Volume::ensure_file_size(const std::filesystem::path& file, std::uint64_t bytes) {
    struct stat st {};
    if (::stat(file.c_str(), &st) == 0 && S_ISBLK(st.st_mode)) {
        if (device_size_bytes(file) < bytes)
            throw FormatError(file.string() + " is a block device smaller than the requested size");
        return;
    }
    UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
    if (fd.fd < 0) throw_errno(errno, "cannot create " + file.string());
    if (::fstat(fd.fd, &st) != 0) throw_errno(errno, "cannot stat " + file.string());
    if (!S_ISREG(st.st_mode)) throw FormatError(file.string() + " is not a regular file");
    if (static_cast<std::uint64_t>(st.st_size) < bytes && ::ftruncate(fd.fd, static_cast<off_t>(bytes)) != 0)
        throw_errno(errno, "cannot extend " + file.string());
}

Volume Volume::format(const std::filesystem::path& device, const FormatOptions& options) {
    struct stat st {};
    stat_or_throw(device, st);
    DeviceLock lock = DeviceLock::acquire(device, true);
    detail::ensure_block_device_not_in_use(device);

    // Validate everything we can before libcryptsetup writes anything: bad input changes nothing on disk.
    const std::uint64_t device_bytes = device_size_bytes(device);
    const std::uint64_t metadata = options.metadata_bytes != 0 ? options.metadata_bytes : kDefaultMetadataBytes;
    // libcryptsetup aligns the data segment to 1 MiB (its default alignment) after both metadata copies
    // and the keyslots area.
    const auto align_mib = [](std::uint64_t bytes) -> std::uint64_t { return (bytes + (1ull << 20) - 1) & ~((1ull << 20) - 1); };
    const std::uint64_t data_offset = options.keyslots_bytes != 0
                                          ? align_mib(2 * metadata + options.keyslots_bytes)
                                          : std::max(kDefaultLuks2DataOffset, align_mib(2 * metadata));
    std::uint32_t sector_size = options.sector_size;
    if (sector_size == 0) {
        const std::uint32_t logical = logical_block_size(device);
        sector_size = (logical <= 4096 && device_bytes > data_offset && (device_bytes - data_offset) % 4096 == 0 &&
                       data_offset % 4096 == 0)
                          ? 4096
                          : 512;
    } else if (sector_size < 512 || sector_size > 4096 || (sector_size & (sector_size - 1)) != 0) {
        throw FormatError("sector size must be 512, 1024, 2048 or 4096");
    }
    const std::uint64_t minimum = data_offset + sector_size;
    if (device_bytes < minimum)
        throw FormatError(device.string() + " is too small for LUKS2: " + std::to_string(device_bytes) +
                          " bytes, need at least " + std::to_string(minimum) + " bytes (" +
                          std::to_string((minimum + (1 << 20) - 1) >> 20) + " MiB)");
    if (options.volume_key != nullptr && options.volume_key->size() != options.volume_key_bytes)
        throw FormatError("supplied volume key has " + std::to_string(options.volume_key->size()) + " bytes, expected " +
                          std::to_string(options.volume_key_bytes));

    auto guard = cryptsetup_guard();
    auto impl = std::make_unique<Impl>(device, std::move(lock));
    crypt_device* raw = nullptr;
    detail::clear_crypt_error();
    check_crypt(crypt_init(&raw, device.c_str()), "cannot open " + device.string());
    impl->cd.reset(raw);
    detail::attach_log_callback(raw);

    if (options.metadata_bytes != 0 || options.keyslots_bytes != 0)
        check_crypt(crypt_set_metadata_size(raw, options.metadata_bytes, options.keyslots_bytes),
                    "invalid LUKS2 metadata/keyslots size");
    if (options.pbkdf) set_pbkdf(raw, options.pbkdf);
    impl->default_pbkdf = options.pbkdf;

    crypt_params_luks2 params{};
    params.sector_size = sector_size;
    params.label = options.label.empty() ? nullptr : options.label.c_str();
    params.subsystem = options.subsystem.empty() ? nullptr : options.subsystem.c_str();
    const char* uuid = options.uuid ? options.uuid->c_str() : nullptr;
    // A null volume key makes libcryptsetup generate a fresh one from its RNG and keep it in the context.
    const char* volume_key = options.volume_key != nullptr ? options.volume_key->chars() : nullptr;
    check_crypt(crypt_format(raw, CRYPT_LUKS2, options.cipher.c_str(), options.cipher_mode.c_str(), uuid, volume_key,
                             options.volume_key_bytes, &params),
                "cannot format " + device.string());
    impl->volume_key_in_memory = true;
    return Volume(std::move(impl));
}

}  // namespace luksforge
