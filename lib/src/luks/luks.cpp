#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>

#include "util/cryptsetup_util.hpp"
#include "luks/device_lock.hpp"
#include "util/digest.hpp"
#include "util/json_util.hpp"

#include <libcryptsetup.h>
#include <openssl/evp.h>

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <exception>
#include <set>

namespace luksforge {

using detail::check_crypt;
using detail::cryptsetup_guard;
using detail::JsonPtr;
using detail::sha256_hex;

namespace {

constexpr std::uint64_t kDefaultLuks2DataOffset = 16ull << 20;  // libcryptsetup's default LUKS2 header size
constexpr std::uint64_t kDefaultMetadataBytes = 16ull << 10;
constexpr std::size_t kMaxVolumeKeyBytes = 512;

struct CryptDeviceDeleter {
    void operator()(crypt_device* cd) const noexcept {
        std::lock_guard lock(detail::cryptsetup_mutex());
        crypt_free(cd);
    }
};
using CryptDevicePtr = std::unique_ptr<crypt_device, CryptDeviceDeleter>;

[[noreturn]] void throw_errno(int code, const std::string& what) {
    const std::string message = what + ": " + std::strerror(code);
    if (code == ENOENT || code == ENOTDIR) throw NotFoundError(message, code);
    if (code == EBUSY) throw BusyError(message, code);
    throw Error(code, message);
}

struct FileDescriptor {
    int fd = -1;
    explicit FileDescriptor(int f) noexcept : fd(f) {}
    FileDescriptor(const FileDescriptor&) = delete;
    FileDescriptor& operator=(const FileDescriptor&) = delete;
    ~FileDescriptor() noexcept {
        if (fd >= 0) ::close(fd);
    }
};

void stat_or_throw(const std::filesystem::path& device, struct stat& st) {
    if (::stat(device.c_str(), &st) != 0) {
        const int code = errno;
        if (code == ENOENT || code == ENOTDIR) throw NotFoundError(device.string() + ": no such file or device", code);
        throw_errno(code, "cannot stat " + device.string());
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        throw FormatError(device.string() + " is neither a regular file nor a block device");
}

std::uint64_t device_size_bytes(const std::filesystem::path& device) {
    struct stat st {};
    stat_or_throw(device, st);
    if (S_ISREG(st.st_mode)) return static_cast<std::uint64_t>(st.st_size);
    FileDescriptor fd(::open(device.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.fd < 0) throw_errno(errno, "cannot open " + device.string());
    std::uint64_t bytes = 0;
    if (::ioctl(fd.fd, BLKGETSIZE64, &bytes) != 0) throw_errno(errno, "cannot get size of " + device.string());
    return bytes;
}

std::uint32_t logical_block_size(const std::filesystem::path& device) {
    struct stat st {};
    stat_or_throw(device, st);
    if (!S_ISBLK(st.st_mode)) return 512;
    FileDescriptor fd(::open(device.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.fd < 0) throw_errno(errno, "cannot open " + device.string());
    int size = 512;
    if (::ioctl(fd.fd, BLKSSZGET, &size) != 0) return 512;
    return static_cast<std::uint32_t>(size);
}

std::string read_bytes(const std::filesystem::path& device, std::uint64_t offset, std::size_t length) {
    FileDescriptor fd(::open(device.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.fd < 0) throw_errno(errno, "cannot open " + device.string());
    std::string data(length, '\0');
    std::size_t done = 0;
    while (done < length) {
        const ssize_t n = ::pread(fd.fd, data.data() + done, length - done, static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            throw_errno(errno, "cannot read " + device.string());
        }
        if (n == 0) break;
        done += static_cast<std::size_t>(n);
    }
    data.resize(done);
    return data;
}

bool has_luks_magic(const std::filesystem::path& device) {
    const std::string head = read_bytes(device, 0, 6);
    static constexpr char luks_magic[] = {'L', 'U', 'K', 'S', '\xba', '\xbe'};
    static constexpr char luks2_backup_magic[] = {'S', 'K', 'U', 'L', '\xba', '\xbe'};
    return head.size() == 6 && (std::memcmp(head.data(), luks_magic, 6) == 0 ||
                                std::memcmp(head.data(), luks2_backup_magic, 6) == 0);
}

// The primary LUKS2 JSON header straight from the device: binary header (magic, version, hdr_size) at 0,
// JSON text from 4096 to hdr_size, NUL-padded.
JsonPtr read_luks2_json(const std::filesystem::path& device) {
    const std::string binary = read_bytes(device, 0, 4096);
    if (binary.size() < 4096 || !has_luks_magic(device)) throw FormatError(device.string() + " is not a LUKS volume");
    const auto byte = [&](std::size_t i) { return static_cast<std::uint64_t>(static_cast<unsigned char>(binary[i])); };
    const std::uint64_t version = (byte(6) << 8) | byte(7);
    if (version != 2) throw FormatError(device.string() + " is not LUKS2");
    std::uint64_t hdr_size = 0;
    for (std::size_t i = 8; i < 16; ++i) hdr_size = (hdr_size << 8) | byte(i);
    if (hdr_size <= 4096 || hdr_size > (4u << 20)) throw FormatError(device.string() + ": bad LUKS2 header size");
    std::string text = read_bytes(device, 4096, static_cast<std::size_t>(hdr_size - 4096));
    text.resize(std::strlen(text.c_str()));
    return detail::json_parse(text, "LUKS2 header of " + device.string());
}

bool json_array_has_string(const json_t* array, std::string_view value) {
    std::size_t i = 0;
    json_t* item = nullptr;
    json_array_foreach(array, i, item) {
        if (json_is_string(item) && value == json_string_value(item)) return true;
    }
    return false;
}

// SHA-256 over a canonical (sorted-key, compact) JSON array of the public digest objects bound to the data
// segments in use. The digest's salt and value are public header data, but equal only for the same key.
std::string fingerprint_of(const json_t* header) {
    const json_t* segments = json_object_get(header, "segments");
    const json_t* digests = json_object_get(header, "digests");
    std::vector<std::string> data_segments;
    const char* key = nullptr;
    json_t* value = nullptr;
    json_object_foreach(const_cast<json_t*>(segments), key, value) {
        // Re-encryption keeps "backup-*" segments that describe old/new state; they are not data segments.
        if (json_array_size(json_object_get(value, "flags")) != 0) continue;
        data_segments.emplace_back(key);
    }
    std::vector<std::pair<int, const json_t*>> bound;
    json_object_foreach(const_cast<json_t*>(digests), key, value) {
        const json_t* digest_segments = json_object_get(value, "segments");
        for (const auto& segment : data_segments) {
            if (json_array_has_string(digest_segments, segment)) {
                bound.emplace_back(std::atoi(key), value);
                break;
            }
        }
    }
    if (bound.empty()) throw FormatError("LUKS2 header has no digest bound to a data segment");
    std::sort(bound.begin(), bound.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    JsonPtr canonical = detail::json_take(json_array());
    for (const auto& [id, digest] : bound) {
        JsonPtr object = detail::json_take(json_object());
        for (const char* field : {"type", "hash", "iterations", "salt", "digest"}) {
            if (json_t* v = json_object_get(digest, field)) json_object_set(object.get(), field, v);
        }
        json_array_append(canonical.get(), object.get());
    }
    return sha256_hex(detail::json_dump(canonical.get(), JSON_COMPACT | JSON_SORT_KEYS));
}

crypt_pbkdf_type to_crypt_pbkdf(const Pbkdf& pbkdf, const char* type_name) {
    crypt_pbkdf_type out{};
    out.type = type_name;
    out.hash = pbkdf.hash.empty() ? "sha256" : pbkdf.hash.c_str();
    const crypt_pbkdf_type* defaults = crypt_get_pbkdf_default(CRYPT_LUKS2);
    const bool argon = pbkdf.type != Pbkdf::Type::pbkdf2;
    out.time_ms = pbkdf.time_ms != 0 ? pbkdf.time_ms : (defaults ? defaults->time_ms : 2000);
    if (argon) {
        out.max_memory_kb = pbkdf.memory_kib != 0 ? pbkdf.memory_kib : (defaults ? defaults->max_memory_kb : 1048576);
        out.parallel_threads = pbkdf.parallel != 0 ? pbkdf.parallel : (defaults ? defaults->parallel_threads : 4);
    }
    if (pbkdf.iterations != 0) {
        // Explicit cost: no benchmark, so formats are reproducible and fast in tests.
        out.iterations = pbkdf.iterations;
        out.flags |= CRYPT_PBKDF_NO_BENCHMARK;
    }
    return out;
}

const char* crypt_type_name(Pbkdf::Type type) {
    switch (type) {
        case Pbkdf::Type::argon2id: return CRYPT_KDF_ARGON2ID;
        case Pbkdf::Type::argon2i: return CRYPT_KDF_ARGON2I;
        case Pbkdf::Type::pbkdf2: return CRYPT_KDF_PBKDF2;
    }
    return CRYPT_KDF_ARGON2ID;
}

Pbkdf from_crypt_pbkdf(const crypt_pbkdf_type& in) {
    Pbkdf out;
    out.type = Pbkdf::parse_type(in.type ? in.type : "argon2id");
    out.hash = in.hash ? in.hash : "";
    out.iterations = in.iterations;
    out.memory_kib = in.max_memory_kb;
    out.parallel = in.parallel_threads;
    out.time_ms = in.time_ms;
    return out;
}

// Apply `pbkdf` for the next keyslot operation, or reset to `fallback` / the library default.
void set_pbkdf(crypt_device* cd, const std::optional<Pbkdf>& pbkdf) {
    if (!pbkdf) {
        check_crypt(crypt_set_pbkdf_type(cd, nullptr), "cannot reset PBKDF");
        return;
    }
    const crypt_pbkdf_type type = to_crypt_pbkdf(*pbkdf, crypt_type_name(pbkdf->type));
    check_crypt(crypt_set_pbkdf_type(cd, &type), "invalid PBKDF parameters");
}

std::string priority_name(crypt_keyslot_priority priority) {
    switch (priority) {
        case CRYPT_SLOT_PRIORITY_IGNORE: return "ignore";
        case CRYPT_SLOT_PRIORITY_PREFER: return "prefer";
        case CRYPT_SLOT_PRIORITY_NORMAL: return "normal";
        default: return "invalid";
    }
}

Token token_from_json(int id, const char* json_text) {
    Token token;
    token.id = id;
    token.json = json_text;
    JsonPtr json = detail::json_parse(token.json, "token " + std::to_string(id));
    token.type = detail::json_string_or(json.get(), "type");
    std::size_t i = 0;
    json_t* item = nullptr;
    json_array_foreach(json_object_get(json.get(), "keyslots"), i, item) {
        if (json_is_string(item)) token.keyslots.push_back(std::atoi(json_string_value(item)));
    }
    return token;
}

struct ProgressContext {
    const std::function<bool(const RekeyProgress&)>* callback = nullptr;
    std::exception_ptr error;
};

// libcryptsetup calls this between hotzones. Non-zero stops re-encryption (resumable later).
int progress_trampoline(std::uint64_t size, std::uint64_t offset, void* usrptr) noexcept {
    auto* context = static_cast<ProgressContext*>(usrptr);
    if (context == nullptr || context->callback == nullptr || !*context->callback) return 0;
    try {
        return (*context->callback)(RekeyProgress{offset, size}) ? 0 : 1;
    } catch (...) {
        context->error = std::current_exception();
        return 1;
    }
}

}  // namespace

// --- Pbkdf ----------------------------------------------------------------------------------------------------

std::string_view Pbkdf::type_name(Type t) noexcept {
    switch (t) {
        case Type::argon2id: return "argon2id";
        case Type::argon2i: return "argon2i";
        case Type::pbkdf2: return "pbkdf2";
    }
    return "argon2id";
}

Pbkdf::Type Pbkdf::parse_type(std::string_view name) {
    if (name == "argon2id") return Type::argon2id;
    if (name == "argon2i") return Type::argon2i;
    if (name == "pbkdf2") return Type::pbkdf2;
    throw FormatError("unknown PBKDF \"" + std::string(name) + "\" (expected argon2id, argon2i or pbkdf2)");
}

// --- Volume ---------------------------------------------------------------------------------------------------

struct Volume::Impl {
    std::filesystem::path path;
    DeviceLock lock;
    CryptDevicePtr cd;
    std::optional<Pbkdf> default_pbkdf;
    bool volume_key_in_memory = false;  // right after format()

    Impl(std::filesystem::path p, DeviceLock l) : path(std::move(p)), lock(std::move(l)) {}

    void load(bool any_version) {
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
            throw FormatError(path.string() + " is LUKS1; luksforge needs LUKS2 (cryptsetup convert --type luks2)");
    }
};

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
    FileDescriptor fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
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

// --- keyslots -------------------------------------------------------------------------------------------------

int Volume::add_keyslot(std::string_view existing_passphrase, std::string_view new_passphrase,
                        const std::optional<Pbkdf>& pbkdf, int slot) {
    SecretBuffer key = volume_key(existing_passphrase);
    return add_keyslot_by_volume_key(new_passphrase, pbkdf, slot, &key);
}

int Volume::add_keyslot_by_volume_key(std::string_view new_passphrase, const std::optional<Pbkdf>& pbkdf, int slot,
                                      const SecretBuffer* volume_key) {
    auto guard = cryptsetup_guard();
    crypt_device* cd = impl_->cd.get();
    if (volume_key == nullptr && !impl_->volume_key_in_memory)
        throw Error(EINVAL, "no volume key in memory for " + impl_->path.string() +
                                " (only right after format); unlock with a passphrase instead");
    set_pbkdf(cd, pbkdf ? pbkdf : impl_->default_pbkdf);
    detail::clear_crypt_error();
    const int target = slot < 0 ? CRYPT_ANY_SLOT : slot;
    int rc = 0;
    if (volume_key == nullptr)
        rc = crypt_keyslot_add_by_volume_key(cd, target, nullptr, 0, new_passphrase.data(), new_passphrase.size());
    else
        rc = crypt_keyslot_add_by_key(cd, target, volume_key->chars(), volume_key->size(), new_passphrase.data(),
                                      new_passphrase.size(), 0);
    const int restored = crypt_set_pbkdf_type(cd, nullptr);
    (void)restored;
    if (impl_->default_pbkdf) set_pbkdf(cd, impl_->default_pbkdf);
    if (rc == -EPERM) throw AuthError("volume key does not match " + impl_->path.string());
    return check_crypt(rc, "cannot add keyslot to " + impl_->path.string());
}

void Volume::remove_keyslot(int slot) {
    auto guard = cryptsetup_guard();
    crypt_device* cd = impl_->cd.get();
    const crypt_keyslot_info status = crypt_keyslot_status(cd, slot);
    if (status == CRYPT_SLOT_INVALID || status == CRYPT_SLOT_INACTIVE)
        throw NotFoundError("keyslot " + std::to_string(slot) + " does not exist in " + impl_->path.string());
    detail::clear_crypt_error();
    check_crypt(crypt_keyslot_destroy(cd, slot), "cannot remove keyslot " + std::to_string(slot));
}

std::vector<int> Volume::remove_tokens_only_of(int slot) {
    auto guard = cryptsetup_guard();
    if (!keyslot(slot))
        throw NotFoundError("keyslot " + std::to_string(slot) + " does not exist in " + impl_->path.string());
    std::vector<int> removed;
    for (const Token& token : tokens()) {
        // Keyslot-less tokens (e.g. state records) serve no keyslot and are none of this slot's business.
        if (token.keyslots.empty() ||
            std::any_of(token.keyslots.begin(), token.keyslots.end(), [&](int other) { return other != slot; }))
            continue;
        remove_token(token.id);
        removed.push_back(token.id);
    }
    return removed;
}

std::vector<int> Volume::remove_keyslot_and_tokens(int slot) {
    auto guard = cryptsetup_guard();
    // Tokens first: an interruption leaves a keyslot without a token, never a token without its keyslot.
    std::vector<int> removed = remove_tokens_only_of(slot);
    remove_keyslot(slot);
    return removed;
}

std::optional<int> Volume::test_passphrase(std::string_view passphrase, int slot) const {
    auto guard = cryptsetup_guard();
    detail::clear_crypt_error();
    // Activation with a null name only verifies the passphrase.
    const int rc = crypt_activate_by_passphrase(impl_->cd.get(), nullptr, slot < 0 ? CRYPT_ANY_SLOT : slot,
                                                passphrase.data(), passphrase.size(), 0);
    if (rc == -EPERM || rc == -ENOENT) {
        detail::clear_crypt_error();
        return std::nullopt;
    }
    return check_crypt(rc, "cannot test passphrase on " + impl_->path.string());
}

SecretBuffer Volume::volume_key(std::string_view passphrase, int slot) const {
    auto guard = cryptsetup_guard();
    SecretBuffer key(kMaxVolumeKeyBytes);
    std::size_t size = key.size();
    detail::clear_crypt_error();
    const int rc = crypt_volume_key_get(impl_->cd.get(), slot < 0 ? CRYPT_ANY_SLOT : slot, key.chars(), &size,
                                        passphrase.data(), passphrase.size());
    if (rc == -EPERM || rc == -ENOENT) {
        detail::clear_crypt_error();
        throw AuthError("no keyslot of " + impl_->path.string() + " opens with this passphrase");
    }
    check_crypt(rc, "cannot unlock " + impl_->path.string());
    key.resize(size);
    return key;
}

std::optional<Keyslot> Volume::keyslot(int slot) const {
    auto guard = cryptsetup_guard();
    crypt_device* cd = impl_->cd.get();
    const crypt_keyslot_info status = crypt_keyslot_status(cd, slot);
    if (status != CRYPT_SLOT_ACTIVE && status != CRYPT_SLOT_ACTIVE_LAST && status != CRYPT_SLOT_UNBOUND)
        return std::nullopt;
    Keyslot info;
    info.id = slot;
    info.bound_to_segment = status != CRYPT_SLOT_UNBOUND;
    const int key_size = crypt_keyslot_get_key_size(cd, slot);
    info.key_bytes = key_size > 0 ? static_cast<std::size_t>(key_size) : 0;
    info.priority = priority_name(crypt_keyslot_get_priority(cd, slot));
    crypt_pbkdf_type pbkdf{};
    if (crypt_keyslot_get_pbkdf(cd, slot, &pbkdf) == 0) info.pbkdf = from_crypt_pbkdf(pbkdf);
    detail::clear_crypt_error();
    return info;
}

std::vector<Keyslot> Volume::keyslots() const {
    auto guard = cryptsetup_guard();
    std::vector<Keyslot> result;
    const int max = crypt_keyslot_max(crypt_get_type(impl_->cd.get()));
    for (int slot = 0; slot < max; ++slot) {
        if (auto info = keyslot(slot)) result.push_back(std::move(*info));
    }
    return result;
}

// --- tokens ---------------------------------------------------------------------------------------------------

std::optional<Token> Volume::token(int id) const {
    auto guard = cryptsetup_guard();
    const char* json = nullptr;
    const int rc = crypt_token_json_get(impl_->cd.get(), id, &json);
    detail::clear_crypt_error();
    if (rc < 0 || json == nullptr) return std::nullopt;
    return token_from_json(id, json);
}

std::vector<Token> Volume::tokens() const {
    auto guard = cryptsetup_guard();
    std::vector<Token> result;
    if (luks_version() != 2) return result;
    const int max = crypt_token_max(CRYPT_LUKS2);
    for (int id = 0; id < max; ++id) {
        if (auto t = token(id)) result.push_back(std::move(*t));
    }
    return result;
}

int Volume::set_token(std::string_view json, int id) {
    JsonPtr parsed = detail::json_parse(json, "token JSON");
    if (!json_is_object(parsed.get()) || !json_is_string(json_object_get(parsed.get(), "type")) ||
        !json_is_array(json_object_get(parsed.get(), "keyslots")))
        throw FormatError("token JSON must be an object with a string \"type\" and an array \"keyslots\"");
    const std::string text(json);
    auto guard = cryptsetup_guard();
    detail::clear_crypt_error();
    return check_crypt(crypt_token_json_set(impl_->cd.get(), id < 0 ? CRYPT_ANY_TOKEN : id, text.c_str()),
                       "cannot store token in " + impl_->path.string());
}

void Volume::remove_token(int id) {
    auto guard = cryptsetup_guard();
    if (!token(id)) throw NotFoundError("token " + std::to_string(id) + " does not exist in " + impl_->path.string());
    detail::clear_crypt_error();
    check_crypt(crypt_token_json_set(impl_->cd.get(), id, nullptr), "cannot remove token " + std::to_string(id));
}

void Volume::assign_token(int token_id, int keyslot_id) {
    auto guard = cryptsetup_guard();
    if (!token(token_id)) throw NotFoundError("token " + std::to_string(token_id) + " does not exist");
    if (!keyslot(keyslot_id)) throw NotFoundError("keyslot " + std::to_string(keyslot_id) + " does not exist");
    detail::clear_crypt_error();
    check_crypt(crypt_token_assign_keyslot(impl_->cd.get(), token_id, keyslot_id),
                "cannot assign token " + std::to_string(token_id) + " to keyslot " + std::to_string(keyslot_id));
}

void Volume::unassign_token(int token_id, int keyslot_id) {
    auto guard = cryptsetup_guard();
    if (!token(token_id)) throw NotFoundError("token " + std::to_string(token_id) + " does not exist");
    detail::clear_crypt_error();
    check_crypt(crypt_token_unassign_keyslot(impl_->cd.get(), token_id, keyslot_id),
                "cannot unassign token " + std::to_string(token_id) + " from keyslot " + std::to_string(keyslot_id));
}

// --- inspection -----------------------------------------------------------------------------------------------

std::string Volume::fingerprint() const {
    auto guard = cryptsetup_guard();
    JsonPtr header = read_luks2_json(impl_->path);
    return fingerprint_of(header.get());
}

Inspection Volume::inspect() const {
    auto guard = cryptsetup_guard();
    crypt_device* cd = impl_->cd.get();
    Inspection out;
    out.path = impl_->path.string();
    const auto str = [](const char* s) { return s != nullptr ? std::string(s) : std::string(); };
    out.uuid = str(crypt_get_uuid(cd));
    out.label = str(crypt_get_label(cd));
    out.subsystem = str(crypt_get_subsystem(cd));
    out.cipher = str(crypt_get_cipher(cd));
    if (const char* mode = crypt_get_cipher_mode(cd); mode != nullptr && *mode != '\0') out.cipher += "-" + str(mode);
    out.volume_key_bytes = static_cast<std::size_t>(std::max(0, crypt_get_volume_key_size(cd)));
    out.sector_size = static_cast<std::uint32_t>(std::max(0, crypt_get_sector_size(cd)));
    out.data_offset_bytes = crypt_get_data_offset(cd) * 512;
    std::uint64_t metadata = 0, keyslots_area = 0;
    if (crypt_get_metadata_size(cd, &metadata, &keyslots_area) == 0) {
        out.metadata_bytes = metadata;
        out.keyslots_bytes = keyslots_area;
    }
    out.device_bytes = device_size_bytes(impl_->path);
    out.reencryption_in_progress = crypt_reencrypt_status(cd, nullptr) != CRYPT_REENCRYPT_NONE;
    detail::clear_crypt_error();
    out.keyslots = keyslots();
    out.tokens = tokens();
    out.fingerprint = fingerprint();
    return out;
}

std::string Inspection::to_json() const {
    using detail::json_take;
    JsonPtr root = json_take(json_object());
    const auto set = [](json_t* object, const char* key, json_t* value) { json_object_set_new(object, key, value); };
    set(root.get(), "path", json_string(path.c_str()));
    set(root.get(), "uuid", json_string(uuid.c_str()));
    set(root.get(), "label", json_string(label.c_str()));
    set(root.get(), "subsystem", json_string(subsystem.c_str()));
    set(root.get(), "cipher", json_string(cipher.c_str()));
    set(root.get(), "volume_key_bits", json_integer(static_cast<json_int_t>(volume_key_bytes * 8)));
    set(root.get(), "sector_size", json_integer(sector_size));
    set(root.get(), "data_offset", json_integer(static_cast<json_int_t>(data_offset_bytes)));
    set(root.get(), "metadata_size", json_integer(static_cast<json_int_t>(metadata_bytes)));
    set(root.get(), "keyslots_size", json_integer(static_cast<json_int_t>(keyslots_bytes)));
    set(root.get(), "device_size", json_integer(static_cast<json_int_t>(device_bytes)));
    set(root.get(), "reencryption_in_progress", json_boolean(reencryption_in_progress));
    json_t* slots = json_array();
    set(root.get(), "keyslots", slots);
    for (const auto& slot : keyslots) {
        json_t* object = json_object();
        set(object, "id", json_integer(slot.id));
        set(object, "bound", json_boolean(slot.bound_to_segment));
        set(object, "key_bits", json_integer(static_cast<json_int_t>(slot.key_bytes * 8)));
        set(object, "priority", json_string(slot.priority.c_str()));
        json_t* pbkdf = json_object();
        set(pbkdf, "type", json_string(std::string(Pbkdf::type_name(slot.pbkdf.type)).c_str()));
        if (slot.pbkdf.type == Pbkdf::Type::pbkdf2) {
            set(pbkdf, "hash", json_string(slot.pbkdf.hash.c_str()));
            set(pbkdf, "iterations", json_integer(slot.pbkdf.iterations));
        } else {
            set(pbkdf, "time", json_integer(slot.pbkdf.iterations));
            set(pbkdf, "memory", json_integer(slot.pbkdf.memory_kib));
            set(pbkdf, "parallel", json_integer(slot.pbkdf.parallel));
        }
        set(object, "pbkdf", pbkdf);
        json_array_append_new(slots, object);
    }
    json_t* token_array = json_array();
    set(root.get(), "tokens", token_array);
    for (const auto& token : tokens) {
        json_t* object = json_object();
        set(object, "id", json_integer(token.id));
        set(object, "type", json_string(token.type.c_str()));
        json_t* ids = json_array();
        for (int slot : token.keyslots) json_array_append_new(ids, json_integer(slot));
        set(object, "keyslots", ids);
        json_array_append_new(token_array, object);
    }
    set(root.get(), "fingerprint", json_string(fingerprint.c_str()));
    return detail::json_dump(root.get(), JSON_INDENT(2) | JSON_PRESERVE_ORDER);
}

// --- re-keying ------------------------------------------------------------------------------------------------

RekeyResult Volume::rekey(const std::vector<std::string_view>& passphrases, const RekeyOptions& options) {
    auto guard = cryptsetup_guard();
    crypt_device* cd = impl_->cd.get();
    if (passphrases.empty()) throw FormatError("rekey needs at least one passphrase");
    if (luks_version() != 2) throw FormatError(impl_->path.string() + " is LUKS1; luksforge needs LUKS2");

    RekeyResult result;
    result.old_fingerprint = fingerprint();
    // Tokens that serve a keyslot now (old keyslots live until re-encryption ends, also when resuming): one of
    // them left with none at the end served only keyslots that were dropped.
    std::vector<int> serving_tokens;
    for (const Token& token : tokens())
        if (!token.keyslots.empty()) serving_tokens.push_back(token.id);
    ProgressContext progress{&options.progress, nullptr};
    const crypt_reencrypt_info status = crypt_reencrypt_status(cd, nullptr);
    if (status == CRYPT_REENCRYPT_INVALID) throw FormatError(impl_->path.string() + ": invalid re-encryption state");

    const auto reload = [&] {
        impl_->cd.reset();
        impl_->volume_key_in_memory = false;
        impl_->load(false);
        cd = impl_->cd.get();
    };

    if (status != CRYPT_REENCRYPT_NONE) {
        // Resume an interrupted re-encryption (after crash recovery if needed). Any supplied passphrase that
        // opens both keys will do; the new keyslots were made with the same passphrases.
        int rc = -EPERM;
        for (std::string_view passphrase : passphrases) {
            crypt_params_reencrypt params{};
            params.flags = CRYPT_REENCRYPT_RESUME_ONLY;
            params.max_hotzone_size = options.max_hotzone_bytes / 512;
            if (status == CRYPT_REENCRYPT_CRASH) {
                crypt_params_reencrypt recovery{};
                recovery.flags = CRYPT_REENCRYPT_RECOVERY;
                detail::clear_crypt_error();
                rc = crypt_reencrypt_init_by_passphrase(cd, nullptr, passphrase.data(), passphrase.size(),
                                                        CRYPT_ANY_SLOT, CRYPT_ANY_SLOT, nullptr, nullptr, &recovery);
                if (rc == -EPERM) continue;
                check_crypt(rc, "cannot recover interrupted re-encryption of " + impl_->path.string());
                reload();
            }
            detail::clear_crypt_error();
            rc = crypt_reencrypt_init_by_passphrase(cd, nullptr, passphrase.data(), passphrase.size(), CRYPT_ANY_SLOT,
                                                    CRYPT_ANY_SLOT, nullptr, nullptr, &params);
            if (rc != -EPERM) break;
        }
        if (rc == -EPERM) throw AuthError("no supplied passphrase opens the re-encryption in progress on " + impl_->path.string());
        check_crypt(rc, "cannot resume re-encryption of " + impl_->path.string());
    } else {
        // Which keyslot each passphrase opens (one PBKDF derivation each).
        std::vector<std::pair<int, std::string_view>> opened;  // old slot, passphrase
        for (std::size_t i = 0; i < passphrases.size(); ++i) {
            const auto slot = test_passphrase(passphrases[i]);
            if (!slot)
                throw AuthError("passphrase " + std::to_string(i + 1) + " opens no keyslot of " + impl_->path.string());
            if (std::none_of(opened.begin(), opened.end(), [&](const auto& o) { return o.first == *slot; }))
                opened.emplace_back(*slot, passphrases[i]);
        }
        std::vector<int> others;
        for (const auto& slot : keyslots()) {
            if (slot.bound_to_segment &&
                std::none_of(opened.begin(), opened.end(), [&](const auto& o) { return o.first == slot.id; }))
                others.push_back(slot.id);
        }
        if (!others.empty() && !options.drop_other_keyslots) {
            std::string list;
            for (int id : others) list += (list.empty() ? "" : ", ") + std::to_string(id);
            throw FormatError("keyslot(s) " + list + " of " + impl_->path.string() +
                              " are not opened by any supplied passphrase; supply their passphrases or drop them "
                              "(--drop-other-keyslots)");
        }
        const int max_slots = crypt_keyslot_max(CRYPT_LUKS2);
        if (static_cast<int>(keyslots().size() + opened.size()) >= max_slots)
            throw FormatError("not enough free keyslots to re-key " + impl_->path.string());

        const std::string cipher = options.cipher.value_or(crypt_get_cipher(cd));
        const std::string mode = options.cipher_mode.value_or(crypt_get_cipher_mode(cd));
        const std::size_t key_bytes = static_cast<std::size_t>(crypt_get_volume_key_size(cd));
        const std::vector<Token> tokens_before = tokens();

        // New keyslots for the new volume key, not yet bound to any segment. The first call generates the
        // key; later ones reuse it (and its digest). Each keeps its old slot's PBKDF cost.
        std::vector<std::pair<int, int>> map;
        SecretBuffer new_key;
        const auto undo = [&] {
            for (const auto& [old_slot, new_slot] : map) crypt_keyslot_destroy(cd, new_slot);
            crypt_set_pbkdf_type(cd, nullptr);
        };
        try {
            for (const auto& [old_slot, passphrase] : opened) {
                crypt_pbkdf_type kept{};
                check_crypt(crypt_keyslot_get_pbkdf(cd, old_slot, &kept), "cannot read PBKDF of keyslot " + std::to_string(old_slot));
                Pbkdf pbkdf = from_crypt_pbkdf(kept);
                if (pbkdf.iterations == 0) pbkdf.iterations = 1;
                set_pbkdf(cd, pbkdf);
                detail::clear_crypt_error();
                int new_slot = 0;
                if (new_key.empty()) {
                    new_slot = check_crypt(crypt_keyslot_add_by_key(cd, CRYPT_ANY_SLOT, nullptr, key_bytes, passphrase.data(),
                                                                    passphrase.size(), CRYPT_VOLUME_KEY_NO_SEGMENT),
                                           "cannot add keyslot for the new volume key");
                    map.emplace_back(old_slot, new_slot);
                    new_key = SecretBuffer(kMaxVolumeKeyBytes);
                    std::size_t size = new_key.size();
                    check_crypt(crypt_volume_key_get(cd, new_slot, new_key.chars(), &size, passphrase.data(), passphrase.size()),
                                "cannot read the new volume key");
                    new_key.resize(size);
                } else {
                    new_slot = check_crypt(crypt_keyslot_add_by_key(cd, CRYPT_ANY_SLOT, new_key.chars(), new_key.size(),
                                                                    passphrase.data(), passphrase.size(),
                                                                    CRYPT_VOLUME_KEY_NO_SEGMENT | CRYPT_VOLUME_KEY_DIGEST_REUSE),
                                           "cannot add keyslot for the new volume key");
                    map.emplace_back(old_slot, new_slot);
                }
                // Tokens follow their keyslots; assigned now so an interrupted run already has them.
                for (const auto& token : tokens_before) {
                    if (std::find(token.keyslots.begin(), token.keyslots.end(), old_slot) != token.keyslots.end())
                        check_crypt(crypt_token_assign_keyslot(cd, token.id, new_slot), "cannot assign token");
                }
            }
            crypt_set_pbkdf_type(cd, nullptr);

            crypt_params_luks2 luks2{};
            luks2.sector_size = static_cast<std::uint32_t>(crypt_get_sector_size(cd));
            crypt_params_reencrypt params{};
            params.mode = CRYPT_REENCRYPT_REENCRYPT;
            params.direction = CRYPT_REENCRYPT_FORWARD;
            params.resilience = "checksum";
            params.max_hotzone_size = options.max_hotzone_bytes / 512;
            params.hash = "sha256";
            params.luks2 = &luks2;
            const auto& [first_old, first_passphrase] = opened.front();
            detail::clear_crypt_error();
            check_crypt(crypt_reencrypt_init_by_passphrase(cd, nullptr, first_passphrase.data(), first_passphrase.size(),
                                                           first_old, map.front().second, cipher.c_str(), mode.c_str(),
                                                           &params),
                        "cannot start re-encryption of " + impl_->path.string());
        } catch (...) {
            if (crypt_reencrypt_status(cd, nullptr) == CRYPT_REENCRYPT_NONE) undo();
            throw;
        }
        result.keyslot_map = map;
    }

    detail::clear_crypt_error();
    const int rc = crypt_reencrypt_run(cd, progress_trampoline, &progress);
    if (progress.error) std::rethrow_exception(progress.error);
    check_crypt(rc, "re-encryption of " + impl_->path.string() + " failed");
    reload();
    if (crypt_reencrypt_status(cd, nullptr) != CRYPT_REENCRYPT_NONE) {
        result.completed = false;  // paused by the progress callback
        result.new_fingerprint = fingerprint();
        return result;
    }

    // libcryptsetup wiped the keyslots of the old key; drop their ids from every token. A token left with no
    // keyslot served only dropped keyslots and opens nothing: it goes with them when the caller asked so.
    for (const auto& token : tokens()) {
        JsonPtr json = detail::json_parse(token.json, "token");
        JsonPtr kept = detail::json_take(json_array());
        bool changed = false;
        for (int slot : token.keyslots) {
            if (keyslot(slot)) json_array_append_new(kept.get(), json_string(std::to_string(slot).c_str()));
            else changed = true;
        }
        const bool served = std::find(serving_tokens.begin(), serving_tokens.end(), token.id) != serving_tokens.end();
        if (options.drop_orphaned_tokens && served && json_array_size(kept.get()) == 0) {
            detail::clear_crypt_error();
            check_crypt(crypt_token_json_set(cd, token.id, nullptr), "cannot remove token " + std::to_string(token.id));
            continue;
        }
        if (!changed) continue;
        json_object_set(json.get(), "keyslots", kept.get());
        const std::string text = detail::json_dump(json.get());
        check_crypt(crypt_token_json_set(cd, token.id, text.c_str()), "cannot update token " + std::to_string(token.id));
    }
    result.new_fingerprint = fingerprint();
    return result;
}

}  // namespace luksforge
