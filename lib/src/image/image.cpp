// Disk images: libblkid probing of partition tables and LUKS headers, and loop devices that cannot leak.
#include <luksforge/error.hpp>
#include <luksforge/image.hpp>

#include "util/json_util.hpp"

#include <blkid/blkid.h>
#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <utility>

namespace luksforge {
namespace {

std::string errno_text(int error) { return std::strerror(error); }

// One file descriptor, closed on scope exit.
class Fd {
public:
    explicit Fd(int fd = -1) noexcept : fd_(fd) {}
    Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    Fd& operator=(Fd&&) = delete;
    ~Fd() noexcept {
        if (fd_ >= 0) ::close(fd_);
    }
    int get() const noexcept { return fd_; }
    int release() noexcept { return std::exchange(fd_, -1); }

private:
    int fd_;
};

Fd open_or_throw(const std::filesystem::path& path, int flags, std::string_view what) {
    int fd = ::open(path.c_str(), flags | O_CLOEXEC);
    if (fd < 0) {
        int error = errno;
        std::string message = std::string(what) + " " + path.string() + ": " + errno_text(error);
        if (error == ENOENT) throw NotFoundError(message);
        if (error == EBUSY) throw BusyError(message);
        throw Error(error, message);
    }
    return Fd(fd);
}

struct ProbeDeleter {
    void operator()(blkid_probe probe) const noexcept { blkid_free_probe(probe); }
};
using ProbePtr = std::unique_ptr<std::remove_pointer_t<blkid_probe>, ProbeDeleter>;

ProbePtr new_probe(int fd, std::uint64_t offset, std::uint64_t size, const std::filesystem::path& path) {
    ProbePtr probe(blkid_new_probe());
    if (!probe) throw Error(ENOMEM, "cannot allocate a libblkid probe");
    if (blkid_probe_set_device(probe.get(), fd, static_cast<blkid_loff_t>(offset),
                               static_cast<blkid_loff_t>(size)) != 0)
        throw Error(EIO, "libblkid cannot read " + path.string());
    return probe;
}

std::string lookup(blkid_probe probe, const char* name) {
    const char* value = nullptr;
    std::size_t length = 0;
    if (blkid_probe_lookup_value(probe, name, &value, &length) != 0 || value == nullptr) return {};
    // libblkid counts the terminating NUL in `length`.
    return std::string(value, ::strnlen(value, length));
}

struct LuksHeader {
    int version = 0;
    std::string uuid;
};

// The LUKS header at [offset, offset+size) of `fd`, if any. Only the superblock chain, with the LUKS
// prober's own version and uuid.
std::optional<LuksHeader> probe_luks(int fd, std::uint64_t offset, std::uint64_t size,
                                     const std::filesystem::path& path) {
    ProbePtr probe = new_probe(fd, offset, size, path);
    blkid_probe_enable_partitions(probe.get(), 0);
    blkid_probe_enable_superblocks(probe.get(), 1);
    blkid_probe_set_superblocks_flags(probe.get(), BLKID_SUBLKS_TYPE | BLKID_SUBLKS_UUID | BLKID_SUBLKS_VERSION);
    if (blkid_do_safeprobe(probe.get()) != 0) return std::nullopt;
    if (lookup(probe.get(), "TYPE") != "crypto_LUKS") return std::nullopt;
    LuksHeader header;
    header.uuid = lookup(probe.get(), "UUID");
    std::string version = lookup(probe.get(), "VERSION");
    header.version = version == "2" ? 2 : version == "1" ? 1 : 0;
    // libblkid only recognises LUKS1 and LUKS2; anything else it would not call crypto_LUKS.
    if (header.version == 0) header.version = 2;
    return header;
}

}  // namespace

// --- probing ------------------------------------------------------------------------------------------------

std::optional<std::string> detect_content(const std::filesystem::path& image) {
    Fd fd = open_or_throw(image, O_RDONLY, "cannot open");
    ProbePtr probe = new_probe(fd.get(), 0, 0, image);
    blkid_probe_enable_superblocks(probe.get(), 1);
    blkid_probe_set_superblocks_flags(probe.get(), BLKID_SUBLKS_TYPE);
    blkid_probe_enable_partitions(probe.get(), 1);
    blkid_probe_set_partitions_flags(probe.get(), BLKID_PARTS_MAGIC);
    const int rc = blkid_do_safeprobe(probe.get());
    if (rc == -2) return "several signatures";
    if (rc < 0) throw Error(EIO, "libblkid cannot probe " + image.string());
    if (rc == 1) return std::nullopt;
    if (std::string type = lookup(probe.get(), "TYPE"); !type.empty()) return type;
    if (std::string table = lookup(probe.get(), "PTTYPE"); !table.empty()) return table + " partition table";
    return std::nullopt;
}

ImageProbe probe_image(const std::filesystem::path& image) {
    Fd fd = open_or_throw(image, O_RDONLY, "cannot open");
    struct stat st{};
    if (::fstat(fd.get(), &st) != 0) throw Error(errno, "cannot stat " + image.string() + ": " + errno_text(errno));
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        throw FormatError(image.string() + " is neither a regular file nor a block device");

    ImageProbe result;
    result.path = image;
    result.block_device = S_ISBLK(st.st_mode);

    ProbePtr probe = new_probe(fd.get(), 0, 0, image);
    result.size_bytes = static_cast<std::uint64_t>(blkid_probe_get_size(probe.get()));

    // A bare LUKS volume first: its header would otherwise be mistaken for nothing by the partition chain.
    if (auto luks = probe_luks(fd.get(), 0, 0, image)) {
        result.luks_version = luks->version;
        result.luks_uuid = luks->uuid;
        return result;
    }

    blkid_probe_enable_superblocks(probe.get(), 0);
    blkid_probe_enable_partitions(probe.get(), 1);
    blkid_probe_set_partitions_flags(probe.get(), BLKID_PARTS_ENTRY_DETAILS);
    int rc = blkid_do_safeprobe(probe.get());
    if (rc < 0) throw FormatError("libblkid cannot make sense of the partition table of " + image.string());
    blkid_partlist list = blkid_probe_get_partitions(probe.get());
    if (rc == 1 || list == nullptr) return result;  // no partition table: an empty or unknown image
    if (blkid_parttable table = blkid_partlist_get_table(list)) {
        if (const char* type = blkid_parttable_get_type(table)) result.table = type;
        if (const char* id = blkid_parttable_get_id(table)) result.table_uuid = id;
    }
    int count = blkid_partlist_numof_partitions(list);
    for (int i = 0; i < count; ++i) {
        blkid_partition part = blkid_partlist_get_partition(list, i);
        if (part == nullptr) continue;
        Partition p;
        p.number = blkid_partition_get_partno(part);
        // libblkid counts in 512-byte sectors whatever the device's logical sector size.
        p.offset_bytes = static_cast<std::uint64_t>(blkid_partition_get_start(part)) * 512;
        p.size_bytes = static_cast<std::uint64_t>(blkid_partition_get_size(part)) * 512;
        if (const char* type = blkid_partition_get_type_string(part))
            p.type = type;
        else {
            char hex[8];
            std::snprintf(hex, sizeof hex, "0x%02x", static_cast<unsigned>(blkid_partition_get_type(part)));
            p.type = hex;
        }
        if (const char* uuid = blkid_partition_get_uuid(part)) p.uuid = uuid;
        if (const char* name = blkid_partition_get_name(part)) p.name = name;
        if (p.size_bytes > 0 && p.offset_bytes + p.size_bytes <= result.size_bytes) {
            if (auto luks = probe_luks(fd.get(), p.offset_bytes, p.size_bytes, image)) {
                p.luks_version = luks->version;
                p.luks_uuid = luks->uuid;
            }
        }
        result.partitions.push_back(std::move(p));
    }
    return result;
}

std::string ImageProbe::to_json() const {
    using namespace detail;
    JsonPtr root = json_take(json_object());
    json_object_set_new(root.get(), "path", json_string(path.c_str()));
    json_object_set_new(root.get(), "block_device", json_boolean(block_device));
    json_object_set_new(root.get(), "size_bytes", json_integer(static_cast<json_int_t>(size_bytes)));
    json_object_set_new(root.get(), "table", table.empty() ? json_null() : json_string(table.c_str()));
    json_object_set_new(root.get(), "table_uuid", table_uuid.empty() ? json_null() : json_string(table_uuid.c_str()));
    json_object_set_new(root.get(), "luks_version", luks_version ? json_integer(*luks_version) : json_null());
    json_object_set_new(root.get(), "luks_uuid", luks_uuid.empty() ? json_null() : json_string(luks_uuid.c_str()));
    json_t* parts = json_array();
    for (const Partition& p : partitions) {
        json_t* o = json_object();
        json_object_set_new(o, "number", json_integer(p.number));
        json_object_set_new(o, "offset_bytes", json_integer(static_cast<json_int_t>(p.offset_bytes)));
        json_object_set_new(o, "size_bytes", json_integer(static_cast<json_int_t>(p.size_bytes)));
        json_object_set_new(o, "type", json_string(p.type.c_str()));
        json_object_set_new(o, "uuid", json_string(p.uuid.c_str()));
        json_object_set_new(o, "name", json_string(p.name.c_str()));
        json_object_set_new(o, "luks_version", p.luks_version ? json_integer(*p.luks_version) : json_null());
        json_object_set_new(o, "luks_uuid", p.luks_uuid.empty() ? json_null() : json_string(p.luks_uuid.c_str()));
        json_array_append_new(parts, o);
    }
    json_object_set_new(root.get(), "partitions", parts);
    return json_dump(root.get(), JSON_INDENT(2) | JSON_PRESERVE_ORDER);
}

// --- LUKS targets -------------------------------------------------------------------------------------------

std::string LuksTarget::describe() const {
    if (!partition) return image.string();
    return image.string() + " partition " + std::to_string(*partition);
}

std::vector<LuksTarget> luks_targets(const ImageProbe& probe) {
    std::vector<LuksTarget> targets;
    if (probe.luks_version == 2) {
        targets.push_back({probe.path, std::nullopt, 0, 0});
        return targets;
    }
    for (const Partition& p : probe.partitions)
        if (p.luks_version == 2) targets.push_back({probe.path, p.number, p.offset_bytes, p.size_bytes});
    return targets;
}

LuksTarget select_luks_target(const std::filesystem::path& image, std::optional<int> partition) {
    ImageProbe probe = probe_image(image);
    if (probe.luks_version) {
        if (*probe.luks_version != 2)
            throw FormatError(image.string() + " is a LUKS" + std::to_string(*probe.luks_version) +
                              " volume; luksforge needs LUKS2");
        if (partition)
            throw FormatError(image.string() + " is a bare LUKS2 volume without partitions; drop --partition");
        return luks_targets(probe).front();
    }
    if (partition) {
        for (const Partition& p : probe.partitions) {
            if (p.number != *partition) continue;
            if (p.luks_version != 2)
                throw FormatError(image.string() + " partition " + std::to_string(p.number) +
                                  (p.luks_version ? " is LUKS1; luksforge needs LUKS2" : " is not a LUKS2 volume"));
            return {probe.path, p.number, p.offset_bytes, p.size_bytes};
        }
        throw NotFoundError(image.string() + " has no partition " + std::to_string(*partition));
    }
    std::vector<LuksTarget> targets = luks_targets(probe);
    if (targets.size() == 1) return targets.front();
    if (targets.empty()) {
        for (const Partition& p : probe.partitions)
            if (p.luks_version == 1)
                throw FormatError(image.string() + " partition " + std::to_string(p.number) +
                                  " is LUKS1; luksforge needs LUKS2");
        throw FormatError(image.string() + " holds no LUKS2 volume" +
                          (probe.table.empty() ? std::string(" (no partition table, no LUKS header)")
                                               : " (" + probe.table + " partition table without a LUKS2 partition)"));
    }
    std::string numbers;
    for (const LuksTarget& t : targets) numbers += (numbers.empty() ? "" : ", ") + std::to_string(*t.partition);
    throw FormatError(image.string() + " holds several LUKS2 partitions (" + numbers + "); choose one with --partition N");
}

// --- loop devices -------------------------------------------------------------------------------------------

namespace {

// /dev/loopN may be missing when the kernel made a new device and nothing (udev, devtmpfs) created its node.
Fd open_loop_device(int number, std::filesystem::path& path) {
    path = "/dev/loop" + std::to_string(number);
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        if (::mknod(path.c_str(), S_IFBLK | 0660, makedev(7, static_cast<unsigned>(number))) != 0 && errno != EEXIST)
            throw Error(errno, "cannot create " + path.string() + ": " + errno_text(errno));
        fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    }
    if (fd < 0) throw Error(errno, "cannot open " + path.string() + ": " + errno_text(errno));
    return Fd(fd);
}

// Configure `loop` over `backing`. Returns false when another process took the device first (EBUSY).
bool configure_loop(int loop, int backing, std::uint64_t offset, std::uint64_t size, bool read_only,
                    const std::filesystem::path& device) {
    loop_config config{};
    config.fd = static_cast<std::uint32_t>(backing);
    config.info.lo_offset = offset;
    config.info.lo_sizelimit = size;
    config.info.lo_flags = LO_FLAGS_AUTOCLEAR | (read_only ? LO_FLAGS_READ_ONLY : 0);
    if (::ioctl(loop, LOOP_CONFIGURE, &config) == 0) return true;
    if (errno == EBUSY) return false;
    if (errno != EINVAL && errno != ENOTTY)
        throw Error(errno, "cannot attach " + device.string() + ": " + errno_text(errno));

    // Kernels before 5.8 lack LOOP_CONFIGURE: bind first, then set offset, limit and flags.
    if (::ioctl(loop, LOOP_SET_FD, backing) != 0) {
        if (errno == EBUSY) return false;
        throw Error(errno, "cannot attach " + device.string() + ": " + errno_text(errno));
    }
    loop_info64 info{};
    info.lo_offset = offset;
    info.lo_sizelimit = size;
    info.lo_flags = LO_FLAGS_AUTOCLEAR;
    if (::ioctl(loop, LOOP_SET_STATUS64, &info) != 0) {
        int error = errno;
        ::ioctl(loop, LOOP_CLR_FD, 0);
        throw Error(error, "cannot configure " + device.string() + ": " + errno_text(error));
    }
    return true;
}

}  // namespace

LoopAttachment LoopAttachment::attach(const std::filesystem::path& file, std::uint64_t offset_bytes,
                                      std::uint64_t size_bytes, bool read_only) {
    Fd backing = open_or_throw(file, read_only ? O_RDONLY : O_RDWR, "cannot open");
    Fd control = open_or_throw("/dev/loop-control", O_RDWR, "cannot open");
    // LOOP_CTL_GET_FREE only names a device that was free a moment ago; another process may bind it before
    // us, which LOOP_CONFIGURE reports as EBUSY. Then ask again.
    for (int attempt = 0; attempt < 64; ++attempt) {
        int number = ::ioctl(control.get(), LOOP_CTL_GET_FREE);
        if (number < 0) {
            if (errno == EBUSY || errno == EAGAIN) {
                std::this_thread::sleep_for(std::chrono::milliseconds(10 * (attempt + 1)));
                continue;
            }
            if (errno == ENOSPC) throw BusyError("no free loop device");
            throw Error(errno, std::string("cannot find a free loop device: ") + errno_text(errno));
        }
        std::filesystem::path device;
        Fd loop = open_loop_device(number, device);
        if (configure_loop(loop.get(), backing.get(), offset_bytes, size_bytes, read_only, device))
            return LoopAttachment(loop.release(), std::move(device));
        std::this_thread::sleep_for(std::chrono::milliseconds(5 * (attempt + 1)));
    }
    throw BusyError("no free loop device: every attempt raced with another process");
}

LoopAttachment::LoopAttachment(LoopAttachment&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), device_(std::move(other.device_)) {}

LoopAttachment& LoopAttachment::operator=(LoopAttachment&& other) noexcept {
    if (this != &other) {
        detach();
        fd_ = std::exchange(other.fd_, -1);
        device_ = std::move(other.device_);
    }
    return *this;
}

LoopAttachment::~LoopAttachment() noexcept { detach(); }

void LoopAttachment::detach() noexcept {
    if (fd_ < 0) return;
    // Flush, then ask for the detach explicitly; should anything else still hold the device open, the kernel
    // keeps it until that last descriptor closes (autoclear), so this never fails in a way that leaks.
    ::fsync(fd_);
    ::ioctl(fd_, LOOP_CLR_FD, 0);
    ::close(fd_);
    fd_ = -1;
}

AttachedTarget AttachedTarget::attach(const LuksTarget& target, bool read_only) {
    if (!target.partition) return AttachedTarget(target, std::nullopt, target.image);
    LoopAttachment loop = LoopAttachment::attach(target.image, target.offset_bytes, target.size_bytes, read_only);
    std::filesystem::path device = loop.device();
    return AttachedTarget(target, std::move(loop), std::move(device));
}

}  // namespace luksforge
