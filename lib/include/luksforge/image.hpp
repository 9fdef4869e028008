// Disk images: probe whole-disk raw images (GPT, MBR), bare LUKS files and block devices with libblkid; find
// their LUKS2 volumes; attach a partition through a loop device that can never leak.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace luksforge {

struct Partition {
    int number = 0;                       // 1-based, as the kernel and sfdisk number them
    std::uint64_t offset_bytes = 0;       // from the start of the image
    std::uint64_t size_bytes = 0;
    std::string type;                     // GPT type GUID, or MBR type as "0x83"
    std::string uuid;                     // GPT partition GUID, or MBR "<disk id>-<nn>"
    std::string name;                     // GPT partition name (empty for MBR)
    std::optional<int> luks_version;      // 1 or 2 when the partition holds a LUKS header
    std::string luks_uuid;
};

struct ImageProbe {
    std::filesystem::path path;
    bool block_device = false;
    std::uint64_t size_bytes = 0;
    std::string table;                    // "gpt", "dos", or empty when there is no partition table
    std::string table_uuid;               // GPT disk GUID or MBR disk id
    std::optional<int> luks_version;      // the image itself is a LUKS volume (bare LUKS file or device)
    std::string luks_uuid;
    std::vector<Partition> partitions;

    std::string to_json() const;          // the `luksforge probe --json` object
};

// Probe a regular file or block device. Throws NotFoundError (missing), Error (unreadable).
ImageProbe probe_image(const std::filesystem::path& image);

// What libblkid recognises on IMAGE as a whole: a superblock ("crypto_LUKS", "ext4", "swap", ...) or a partition
// table ("gpt", "dos"); "several signatures" when they disagree; nullopt for a blank or unrecognised device.
// Lets `format` refuse to destroy data it was not told to overwrite. Throws like probe_image.
std::optional<std::string> detect_content(const std::filesystem::path& image);

// One LUKS2 volume inside an image: the whole image (bare LUKS) or one partition of it.
struct LuksTarget {
    std::filesystem::path image;
    std::optional<int> partition;         // partition number; nullopt for a bare LUKS image
    std::uint64_t offset_bytes = 0;
    std::uint64_t size_bytes = 0;         // 0 for a bare image (the whole file or device)

    std::string describe() const;         // "disk.img" or "disk.img partition 2"
};

// Every LUKS2 volume in a probed image (empty when there is none).
std::vector<LuksTarget> luks_targets(const ImageProbe& probe);
// The one LUKS2 volume to operate on: the bare volume, the single LUKS2 partition, or partition `partition`.
// Throws FormatError when there is none, when several exist and `partition` is not given (the message lists
// them), or when `partition` is not a LUKS2 partition.
LuksTarget select_luks_target(const std::filesystem::path& image, std::optional<int> partition = std::nullopt);

// A file (or a byte range of it) attached to a free loop device. Attached with LO_FLAGS_AUTOCLEAR and kept
// open: the kernel detaches the device when the last descriptor closes, so neither an exception, nor a
// signal, nor kill -9 of the process leaves a loop device behind. Move-only.
class LoopAttachment {
public:
    // `size_bytes` 0 = up to the end of the file. Throws NotFoundError, BusyError (no free loop device),
    // Error (ioctl failures, with the kernel's message).
    static LoopAttachment attach(const std::filesystem::path& file, std::uint64_t offset_bytes = 0,
                                 std::uint64_t size_bytes = 0, bool read_only = false);

    LoopAttachment(LoopAttachment&& other) noexcept;
    LoopAttachment& operator=(LoopAttachment&& other) noexcept;
    LoopAttachment(const LoopAttachment&) = delete;
    LoopAttachment& operator=(const LoopAttachment&) = delete;
    ~LoopAttachment() noexcept;

    const std::filesystem::path& device() const noexcept { return device_; }  // e.g. /dev/loop3
    int native_handle() const noexcept { return fd_; }                        // the open loop device
    // Detach now (also done by the destructor). Idempotent.
    void detach() noexcept;

private:
    LoopAttachment(int fd, std::filesystem::path device) noexcept : fd_(fd), device_(std::move(device)) {}
    int fd_ = -1;
    std::filesystem::path device_;
};

// A LuksTarget made usable by path: the image itself for a bare volume, else a loop device over the
// partition that lives as long as this object.
class AttachedTarget {
public:
    static AttachedTarget attach(const LuksTarget& target, bool read_only = false);
    const std::filesystem::path& device() const noexcept { return device_; }
    const LuksTarget& target() const noexcept { return target_; }

private:
    AttachedTarget(LuksTarget target, std::optional<LoopAttachment> loop, std::filesystem::path device) noexcept
        : target_(std::move(target)), loop_(std::move(loop)), device_(std::move(device)) {}
    LuksTarget target_;
    std::optional<LoopAttachment> loop_;
    std::filesystem::path device_;
};

}  // namespace luksforge
