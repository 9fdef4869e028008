// Direct reads of a volume's device, without libcryptsetup: its type and size, raw bytes, the LUKS magic, the
// primary LUKS2 JSON header (used for the fingerprint, and to tell "not LUKS" from a damaged header) and the
// LUKS1 master-key digest (the LUKS1 fingerprint).
#include "luks/volume_internal.hpp"

#include "util/digest.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>

namespace luksforge::detail {

[[noreturn]] void throw_errno(int code, const std::string& what) {
    const std::string message = what + ": " + std::strerror(code);
    if (code == ENOENT || code == ENOTDIR) throw NotFoundError(message, code);
    if (code == EBUSY) throw BusyError(message, code);
    throw Error(code, message);
}

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
    UniqueFd fd(::open(device.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.fd < 0) throw_errno(errno, "cannot open " + device.string());
    std::uint64_t bytes = 0;
    if (::ioctl(fd.fd, BLKGETSIZE64, &bytes) != 0) throw_errno(errno, "cannot get size of " + device.string());
    return bytes;
}

std::uint32_t logical_block_size(const std::filesystem::path& device) {
    struct stat st {};
    stat_or_throw(device, st);
    if (!S_ISBLK(st.st_mode)) return 512;
    UniqueFd fd(::open(device.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.fd < 0) throw_errno(errno, "cannot open " + device.string());
    int size = 512;
    if (::ioctl(fd.fd, BLKSSZGET, &size) != 0) return 512;
    return static_cast<std::uint32_t>(size);
}

std::string read_bytes(const std::filesystem::path& device, std::uint64_t offset, std::size_t length) {
    UniqueFd fd(::open(device.c_str(), O_RDONLY | O_CLOEXEC));
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

// Binary header (magic, version, hdr_size) at 0, JSON text from 4096 to hdr_size, NUL-padded.
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
    return json_parse(text, "LUKS2 header of " + device.string());
}

// LUKS1 phdr: magic (6), version (2), cipher-name (32), cipher-mode (32), hash-spec (32) at 72, payload-offset
// (4), key-bytes (4), mk-digest (20) at 112, mk-digest-salt (32) at 132, mk-digest-iter (4, big-endian) at 164.
JsonPtr read_luks1_digest(const std::filesystem::path& device) {
    const std::string binary = read_bytes(device, 0, 592);
    if (binary.size() < 592 || !has_luks_magic(device)) throw FormatError(device.string() + " is not a LUKS volume");
    const auto byte = [&](std::size_t i) { return static_cast<std::uint32_t>(static_cast<unsigned char>(binary[i])); };
    if (((byte(6) << 8) | byte(7)) != 1) throw FormatError(device.string() + " is not LUKS1");
    const std::string hash(binary.data() + 72, strnlen(binary.data() + 72, 32));
    const std::uint32_t iterations = (byte(164) << 24) | (byte(165) << 16) | (byte(166) << 8) | byte(167);
    if (hash.empty() || iterations == 0)
        throw FormatError("LUKS1 header of " + device.string() + " has no master-key digest");
    JsonPtr digest = json_take(json_object());
    json_object_set_new(digest.get(), "type", json_string("pbkdf2"));
    json_object_set_new(digest.get(), "hash", json_stringn(hash.data(), hash.size()));
    json_object_set_new(digest.get(), "iterations", json_integer(iterations));
    json_object_set_new(digest.get(), "salt", json_string(base64(std::string_view(binary).substr(132, 32)).c_str()));
    json_object_set_new(digest.get(), "digest", json_string(base64(std::string_view(binary).substr(112, 20)).c_str()));
    return digest;
}

}  // namespace luksforge::detail
